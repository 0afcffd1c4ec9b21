"""What vebus computes from events, with no I/O: patterns (does it match), templates (render
text from it), stats (summarise many).
"""
