"""Integration tests: gatekeep in front of real peers (Prosody, nginx, sshd, clients)."""
