"""The embedded default world of `lipo run`: a small task with an exact gold reward, made on the fly."""
