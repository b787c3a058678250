"""crmsync: keep calendar events, contacts and tasks in step between groupware and a CRM."""

__version__ = "0.1.0"
