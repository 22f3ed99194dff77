"""Wire types: msgspec Structs with explicit tags. The only place message types live."""
