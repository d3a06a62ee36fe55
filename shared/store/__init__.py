"""Firestore adapters: one module per aggregate. google.cloud.firestore is imported lazily here."""
