"""A Django project that keeps a Pleo grant per customer company in PostgreSQL."""
