//! Frame-level limits: deep tables, frame sizes before tune, content sizes, channel and connection limits.
