"""countdrift: how far do chat unread counters in Redis drift when things break?"""
__version__ = "0.1.0"
