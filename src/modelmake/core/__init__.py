"""The machinery's ground floor: errors, atomic writes, locks, process lifecycle, hashing,
manifests. Imports nothing else of modelmake; never part of an artifact's code key."""
