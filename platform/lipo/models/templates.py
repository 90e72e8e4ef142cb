"""Text templates of the reward models, in a module that imports nothing (no torch), so configs can use them.

    DEFAULT_PAIR_TEMPLATE.format(prompt="2+2=", a="4", b="5")   # what the pairwise ranking model reads

`lipo.models.reward` fills them; `lipo.training.config` (reward-model training) takes its default from here.
"""

DEFAULT_PAIR_TEMPLATE = "Prompt: {prompt}\nResponse A: {a}\nResponse B: {b}\nIs response A better than B?"
