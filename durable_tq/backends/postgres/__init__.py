"""PostgreSQL: several brokers on one database (store, SQL, migrations); docs/postgres.md."""
