"""Thin Ray programs that wire lipo's components together; each is also a Ray job entrypoint."""
