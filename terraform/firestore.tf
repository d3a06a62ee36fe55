# Firestore (native mode) with the composite indexes the queries need and the TTL policies of expiring
# documents, all from the manifest.

resource "google_firestore_database" "default" {
  name                    = "(default)"
  location_id             = var.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"
  # Point-in-time recovery: seven days of versions to restore from.
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"

  depends_on = [google_project_service.api]
}

resource "google_firestore_index" "index" {
  for_each   = local.indexes
  database   = google_firestore_database.default.name
  collection = each.value.collection

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.field
      order      = fields.value.order
    }
  }
}

resource "google_firestore_field" "ttl" {
  for_each   = local.ttls
  database   = google_firestore_database.default.name
  collection = each.value.collection_group
  field      = each.value.field

  ttl_config {}

  # A TTL field needs no single-field index of its own.
  index_config {}
}
