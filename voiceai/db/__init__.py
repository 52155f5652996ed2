"""The platform data layer: tables, engines and tenant-scoped sessions, migrations."""
