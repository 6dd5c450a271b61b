"""Wire protocol: the .proto files, the modules generated from them, and the codec.

Nothing here but schemas, generated code (`python -m runtime.protocol.generate`) and
``codec`` (how Python values become bytes).
"""
