"""
Onion-service listeners: tor publishes a v3 service whose streams feed a listener.

``listener`` runs one ``[listener.tor]``; ``launch`` starts a tor of our own,
``control`` talks to one (txtorcon), ``hsconf`` renders its onion-service
configuration, ``keydir`` prepares the key directory and client authorization.
"""

__all__: list[str] = []
