//! Dead-letter cycles, topic-pattern blow-ups and peer-controlled numbers in the core.
