//! The synthetic GTZAN-shaped corpus generator.
