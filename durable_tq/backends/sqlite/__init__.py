"""SQLite: the group-commit writer and read connections, the SQL, the migrations."""
