//! Memory watermark, connection.blocked, bounded writer queues and the flood test.
