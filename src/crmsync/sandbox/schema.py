"""The sObjects the sandbox serves: their fields, types, lengths and key prefixes.

Names, types and lengths follow the Object Reference (and /work/notes/sf-contract.md):
https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_event.htm
https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_contact.htm
https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_task.htm
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The first three characters of every record Id name its object.
KEY_PREFIXES = {
    "Event": "00U", "Task": "00T", "Contact": "003", "Lead": "00Q", "Account": "001",
    "User": "005", "EventRelation": "0RE",
}
OBJECT_BY_PREFIX = {prefix: name for name, prefix in KEY_PREFIXES.items()}


@dataclass(frozen=True)
class Field:
    """One field as describe shows it. ``restricted``: a picklist that rejects other values."""

    name: str
    type: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    picklist: tuple[str, ...] = ()
    default: str | None = None
    restricted: bool = False
    references: tuple[str, ...] = ()
    relationship: str | None = None
    filterable: bool = True

    def describe(self) -> dict:
        return {
            "name": self.name, "label": self.name, "type": self.type, "length": self.length,
            "nillable": self.nillable, "createable": self.createable,
            "updateable": self.updateable, "custom": False,
            "restrictedPicklist": self.restricted, "filterable": self.filterable,
            "referenceTo": list(self.references), "relationshipName": self.relationship,
            "picklistValues": [
                {"value": v, "label": v, "active": True, "defaultValue": v == self.default,
                 "validFor": None}
                for v in self.picklist
            ],
        }


@dataclass(frozen=True)
class SObject:
    name: str
    fields: dict[str, Field] = field(default_factory=dict)
    createable: bool = True
    # Child relationships a SOQL subquery may name: relationship -> (child object, its key).
    children: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def key_prefix(self) -> str:
        return KEY_PREFIXES[self.name]

    def field(self, name: str) -> Field | None:
        """Field names are case-insensitive in Salesforce."""
        return self._lower().get(name.lower())

    def _lower(self) -> dict[str, Field]:
        return {k.lower(): f for k, f in self.fields.items()}

    def describe(self) -> dict:
        return {
            "name": self.name, "label": self.name, "keyPrefix": self.key_prefix,
            "custom": False, "createable": self.createable, "updateable": self.createable,
            "deletable": self.createable, "queryable": True, "replicateable": True,
            "fields": [f.describe() for f in self.fields.values()],
            "childRelationships": [
                {"relationshipName": rel, "childSObject": child, "field": key}
                for rel, (child, key) in self.children.items()
            ],
        }


def _s(name: str, length: int, **kw) -> Field:
    return Field(name, "string", length, **kw)


def _ref(name: str, *to: str, relationship: str | None = None, **kw) -> Field:
    return Field(name, "reference", 18, references=to, relationship=relationship, **kw)


def _long(name: str) -> Field:
    """A long text area: 32,000 characters, not usable in a WHERE clause."""
    return Field(name, "textarea", 32000, filterable=False)


def _ro(name: str, type_: str, length: int = 0, **kw) -> Field:
    return Field(name, type_, length, createable=False, updateable=False, **kw)


def _common() -> list[Field]:
    return [
        _ro("Id", "id", 18, nillable=False),
        _ro("IsDeleted", "boolean", nillable=False),
        _ro("CreatedDate", "datetime", nillable=False),
        _ro("LastModifiedDate", "datetime", nillable=False),
        _ro("SystemModstamp", "datetime", nillable=False),
    ]


def _owner() -> Field:
    return _ref("OwnerId", "User", relationship="Owner", nillable=False)


def _address(prefix: str) -> list[Field]:
    return [
        Field(f"{prefix}Street", "textarea", 255), _s(f"{prefix}City", 40),
        _s(f"{prefix}State", 80), _s(f"{prefix}PostalCode", 20), _s(f"{prefix}Country", 80),
    ]


def _build(name: str, fields: list[Field], **kw) -> SObject:
    return SObject(name, {f.name: f for f in fields}, **kw)


SHOW_AS = ("Busy", "OutOfOffice", "Free")
EVENT_TYPES = ("Call", "Email", "Meeting", "Other")
TASK_STATUS = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")
TASK_PRIORITY = ("High", "Normal", "Low")
CLOSED_TASK_STATUS = ("Completed",)

WHO = ("Contact", "Lead")
WHAT = ("Account",)

OBJECTS: dict[str, SObject] = {
    "Event": _build("Event", [
        *_common(), _owner(),
        _s("Subject", 255),
        Field("StartDateTime", "datetime"), Field("EndDateTime", "datetime"),
        Field("ActivityDateTime", "datetime"), Field("ActivityDate", "date"),
        Field("EndDate", "date"),
        Field("IsAllDayEvent", "boolean", nillable=False),
        Field("DurationInMinutes", "int"),
        _s("Location", 255), _long("Description"),
        Field("IsPrivate", "boolean", nillable=False),
        Field("ShowAs", "picklist", 40, picklist=SHOW_AS, default="Busy", restricted=True),
        Field("Type", "picklist", 40, picklist=EVENT_TYPES),
        _ref("WhoId", *WHO, relationship="Who"), _ref("WhatId", *WHAT, relationship="What"),
        Field("IsReminderSet", "boolean", nillable=False),
        Field("ReminderDateTime", "datetime"),
        Field("IsRecurrence2", "boolean", nillable=False, updateable=False),
        Field("Recurrence2PatternText", "textarea", 1024),
        _s("Recurrence2PatternVersion", 40),
        _s("Recurrence2PatternTimeZone", 40),
        _ro("Recurrence2PatternStartDate", "datetime"),
        _ro("IsRecurrence2Exception", "boolean", nillable=False),
        _ro("IsRecurrence2Exclusion", "boolean", nillable=False),
        # The series every occurrence of an event series shares (an ActivityRecurrence2
        # Id, prefix 828), as in the Change Data Capture example for recurring events.
        _ro("ActivityRecurrence2Id", "reference", 18),
    ], children={"EventRelations": ("EventRelation", "EventId")}),
    "EventRelation": _build("EventRelation", [
        *_common(),
        _ref("EventId", "Event", relationship="Event", nillable=False, updateable=False),
        _ref("RelationId", "Contact", "Lead", "User", relationship="Relation",
             nillable=False, updateable=False),
        Field("IsInvitee", "boolean", nillable=False),
        Field("IsParent", "boolean", nillable=False),
        Field("IsWhat", "boolean", nillable=False),
        Field("Status", "picklist", 40, picklist=("New", "Accepted", "Declined"),
              default="New", restricted=True),
        _s("Response", 255),
    ]),
    "Task": _build("Task", [
        *_common(), _owner(),
        _s("Subject", 255), Field("ActivityDate", "date"),
        Field("Status", "picklist", 40, nillable=False, picklist=TASK_STATUS,
              default="Not Started", restricted=True),
        Field("Priority", "picklist", 40, nillable=False, picklist=TASK_PRIORITY,
              default="Normal", restricted=True),
        _long("Description"),
        _ro("IsClosed", "boolean", nillable=False),
        _ro("CompletedDateTime", "datetime"),
        _ref("WhoId", *WHO, relationship="Who"), _ref("WhatId", *WHAT, relationship="What"),
    ]),
    "Contact": _build("Contact", [
        *_common(), _owner(),
        _s("FirstName", 40), _s("LastName", 80, nillable=False),
        _ro("Name", "string", 121),
        Field("Email", "email", 80),
        *(Field(p, "phone", 40) for p in
          ("Phone", "MobilePhone", "HomePhone", "OtherPhone", "Fax")),
        _s("Title", 128), _s("Department", 80),
        _ref("AccountId", "Account", relationship="Account"),
        *_address("Mailing"), *_address("Other"),
        Field("Birthdate", "date"), _long("Description"),
    ]),
    "Lead": _build("Lead", [
        *_common(), _owner(),
        _s("FirstName", 40), _s("LastName", 80, nillable=False), _ro("Name", "string", 121),
        Field("Email", "email", 80), _s("Company", 255, nillable=False), _s("Title", 128),
        Field("Phone", "phone", 40), _ro("IsConverted", "boolean", nillable=False),
    ]),
    "Account": _build("Account", [*_common(), _owner(), _s("Name", 255, nillable=False)]),
    "User": _build("User", [
        *_common(), _ro("Name", "string", 121), _ro("Email", "email", 128),
        _ro("Username", "string", 80), _ro("TimeZoneSidKey", "picklist", 40),
    ], createable=False),
}

REQUIRED = {
    "Contact": ("LastName",), "Lead": ("LastName", "Company"), "Account": ("Name",),
    "EventRelation": ("EventId", "RelationId"),
}

# Relationship name -> (reference field, target object is found from the Id's prefix).
RELATIONSHIPS = {
    obj: {f.relationship.lower(): f.name for f in o.fields.values() if f.relationship}
    for obj, o in OBJECTS.items()
}


def sobject(name: str) -> SObject | None:
    """The object of that name, case-insensitively (Salesforce accepts any case)."""
    for key, obj in OBJECTS.items():
        if key.lower() == name.lower():
            return obj
    return None
