"""A local Salesforce org: the REST API subset crmsync's Salesforce connector uses.

``crmsync sandbox`` runs it; tests use :class:`crmsync.sandbox.server.Sandbox`. Modules:
schema (objects and fields), db (SQLite storage, clock, Ids), records (create/update/delete
with Salesforce's checks), recurrence (event series), soql + query (the SOQL subset),
collections (sObject Collections), replication (updated/deleted), oauth, control
(/_sandbox/), app (routes), tls (certificates), server (the background server).
"""
