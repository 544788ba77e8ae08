"""
raps: a Twisted daemon that lets web pages poll and watch background tasks
whose state workers keep in Redis.
"""

__version__ = "0.1.0"
