//! Permissions, password handling, the three connection races, channel.flow and signals.
