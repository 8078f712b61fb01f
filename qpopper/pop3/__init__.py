"""The POP3 protocol, sans I/O: bytes in, bytes out, no OS calls (a test enforces it).

protocol.py is the state machine and its per-state command tables; auth_state.py and
trans_state.py hold the AUTHORIZATION and TRANSACTION verbs; command.py parses a command
line; lines.py frames multi-line replies; capa.py answers CAPA; responses.py is the `+OK` /
`-ERR [CODE]` vocabulary. The processes that drive it are in qpopper/server/ (docs/design.md).
"""
