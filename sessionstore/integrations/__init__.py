"""Adapters that let agent frameworks keep their state in a SessionStore.

Each adapter is its own module with its own extra (``pip install 'sessionstore[langgraph]'``);
``import sessionstore`` imports none of them, nor any framework.
"""
