//! A pre-parse check of the field tables in a frame, run before amq-protocol's
//! parser sees the bytes.
//!
//! amq-protocol parses field tables and arrays recursively with no depth limit,
//! so a frame nesting arrays a few thousand levels deep overflows the stack of
//! the task parsing it and aborts the whole process (about 1.9 KiB of stack per
//! level in release, 10 KiB in debug, against 2 MiB per tokio worker). This
//! module walks the same bytes *iteratively*: a fixed stack of container end
//! offsets, each length checked against its parent's end, value widths from
//! the type tags. Anything nested deeper than [`MAX_DEPTH`] (rabbitmq-c's
//! limit), any unknown tag and any length running past its container is
//! refused, so the recursive parser only ever sees shallow, well-formed tables.
//!
//! It is a scanner, not a decoder: it allocates nothing and keeps no values.

use amq_protocol::types::AMQPType;

use crate::core::error::codes;
use crate::core::AmqpError;

/// How deeply field tables and arrays may nest, the outermost table counting
/// as 1 (the limit rabbitmq-c applies to what it decodes).
pub(crate) const MAX_DEPTH: usize = 100;

/// Why a frame's field tables were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableError {
    /// A length runs past its container or the frame, or a type tag is unknown.
    Malformed,
    /// Tables and arrays nest deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// One fixed-layout field before a method's table.
#[derive(Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortStr,
}

use Field::{Octet, Short, ShortStr};

/// The fields before the field table of each method amq-protocol parses one
/// for (whichever direction the method normally travels: a peer may send a
/// server-only method, and it is parsed all the same). `None`: no table.
fn table_position(class: u16, method: u16) -> Option<&'static [Field]> {
    Some(match (class, method) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Octet, Octet],
        // connection.start-ok: client-properties first.
        (10, 11) => &[],
        // exchange.declare: ticket, exchange, type, flags, arguments.
        (40, 10) => &[Short, ShortStr, ShortStr, Octet],
        // exchange.bind / unbind, queue.bind: ticket, three names, flags, arguments.
        (40, 30) | (40, 40) | (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet],
        // queue.declare: ticket, queue, flags, arguments.
        (50, 10) => &[Short, ShortStr, Octet],
        // queue.unbind: ticket, queue, exchange, routing key, arguments (no flags).
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr],
        // basic.consume: ticket, queue, consumer tag, flags, arguments.
        (60, 20) => &[Short, ShortStr, ShortStr, Octet],
        _ => return None,
    })
}

/// Checks the field tables of one frame's payload (between the 7-byte frame
/// header and the end marker): method arguments for type 1, the `headers`
/// property for type 2; other frame types carry none.
pub(crate) fn check_frame(frame_type: u8, payload: &[u8]) -> Result<(), TableError> {
    match frame_type {
        1 => check_method(payload),
        2 => check_content_header(payload),
        _ => Ok(()),
    }
}

/// The connection error for a frame whose tables nest too deeply: 502
/// SYNTAX_ERROR, naming the method when the frame is one.
pub(crate) fn too_deep(frame_type: u8, payload: &[u8]) -> AmqpError {
    let detail = format!("field tables nested deeper than {MAX_DEPTH} levels");
    match (frame_type, read_u16(payload, 0), read_u16(payload, 2)) {
        (1, Some(class), Some(method)) => AmqpError::new(
            codes::SYNTAX_ERROR,
            format!("{detail} in method (class {class}, method {method})"),
        )
        .during(class, method),
        _ => AmqpError::new(codes::SYNTAX_ERROR, format!("{detail} in content header")),
    }
}

fn check_method(payload: &[u8]) -> Result<(), TableError> {
    let (Some(class), Some(method)) = (read_u16(payload, 0), read_u16(payload, 2)) else {
        // Too short to name a method: the parser refuses it without recursing.
        return Ok(());
    };
    let Some(fields) = table_position(class, method) else {
        return Ok(());
    };
    let mut pos = 4;
    for field in fields {
        pos = match field {
            Octet => advance(pos, 1, payload.len())?,
            Short => advance(pos, 2, payload.len())?,
            ShortStr => {
                let len = usize::from(*payload.get(pos).ok_or(TableError::Malformed)?);
                advance(pos, 1 + len, payload.len())?
            }
        };
    }
    check_table_at(payload, pos)
}

/// Bits of the content header's property flags, in the order the properties
/// follow them (AMQP 0-9-1, class basic).
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;

fn check_content_header(payload: &[u8]) -> Result<(), TableError> {
    // class-id, weight, body-size, then the property flags.
    let Some(flags) = read_u16(payload, 12) else {
        return Err(TableError::Malformed);
    };
    if flags & HEADERS == 0 {
        return Ok(());
    }
    let mut pos = 14;
    for bit in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & bit != 0 {
            let len = usize::from(*payload.get(pos).ok_or(TableError::Malformed)?);
            pos = advance(pos, 1 + len, payload.len())?;
        }
    }
    check_table_at(payload, pos)
}

/// Checks a field table's entries given without the table's length prefix
/// (the AMQPLAIN response of `connection.start-ok`).
pub(crate) fn check_table_body(bytes: &[u8]) -> Result<(), TableError> {
    walk(bytes, 0, bytes.len(), true)
}

/// Checks the length-prefixed field table starting at `pos` in `buf`.
fn check_table_at(buf: &[u8], pos: usize) -> Result<(), TableError> {
    let len = read_u32(buf, pos).ok_or(TableError::Malformed)?;
    let start = advance(pos, 4, buf.len())?;
    let end = advance(start, len, buf.len())?;
    walk(buf, start, end, true)
}

/// Walks the entries of one container spanning `start..end` of `buf` (a table
/// if `table`, else an array) and everything nested in it, without recursion.
fn walk(buf: &[u8], start: usize, end: usize, table: bool) -> Result<(), TableError> {
    if end > buf.len() {
        return Err(TableError::Malformed);
    }
    // The open containers, outermost first: where each ends and whether its
    // entries carry a key. A fixed array: this runs for every publish that
    // carries headers, so it should not allocate.
    let mut open = [(end, table); MAX_DEPTH];
    let mut depth = 1;
    let mut pos = start;
    while depth > 0 {
        let (end, table) = open.get(depth - 1).copied().ok_or(TableError::TooDeep)?;
        if pos == end {
            depth -= 1;
            continue;
        }
        if table {
            let key = usize::from(*buf.get(pos).ok_or(TableError::Malformed)?);
            pos = advance(pos, 1 + key, end)?;
        }
        let tag = *buf
            .get(pos)
            .filter(|_| pos < end)
            .ok_or(TableError::Malformed)?;
        pos += 1;
        let kind = AMQPType::from_id(char::from(tag)).ok_or(TableError::Malformed)?;
        let width = match kind {
            AMQPType::FieldTable | AMQPType::FieldArray => {
                let len = read_u32(buf, pos).ok_or(TableError::Malformed)?;
                pos = advance(pos, 4, end)?;
                let inner_end = advance(pos, len, end)?;
                let slot = open.get_mut(depth).ok_or(TableError::TooDeep)?;
                *slot = (inner_end, kind == AMQPType::FieldTable);
                depth += 1;
                continue;
            }
            AMQPType::LongString | AMQPType::ByteArray => {
                let len = read_u32(buf, pos).ok_or(TableError::Malformed)?;
                4usize.checked_add(len).ok_or(TableError::Malformed)?
            }
            // Never produced by `from_id` (a short string has no tag of its
            // own), but its width is known.
            AMQPType::ShortString => 1 + usize::from(*buf.get(pos).ok_or(TableError::Malformed)?),
            AMQPType::Void => 0,
            AMQPType::Boolean | AMQPType::ShortShortInt | AMQPType::ShortShortUInt => 1,
            AMQPType::ShortInt | AMQPType::ShortUInt => 2,
            AMQPType::LongInt | AMQPType::LongUInt | AMQPType::Float => 4,
            AMQPType::DecimalValue => 5,
            AMQPType::LongLongInt
            | AMQPType::LongLongUInt
            | AMQPType::Double
            | AMQPType::Timestamp => 8,
        };
        pos = advance(pos, width, end)?;
    }
    Ok(())
}

/// `pos + n`, if that stays within `end`.
fn advance(pos: usize, n: usize, end: usize) -> Result<usize, TableError> {
    pos.checked_add(n)
        .filter(|&p| p <= end)
        .ok_or(TableError::Malformed)
}

fn read_u16(buf: &[u8], pos: usize) -> Option<u16> {
    let bytes = buf.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

/// A big-endian u32 length at `pos`, as a `usize`.
fn read_u32(buf: &[u8], pos: usize) -> Option<usize> {
    let bytes = buf.get(pos..pos.checked_add(4)?)?;
    usize::try_from(u32::from_be_bytes(bytes.try_into().ok()?)).ok()
}

#[cfg(test)]
mod tests;
