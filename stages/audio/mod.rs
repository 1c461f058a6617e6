//! Audio decoding shared by ingest and features.
