//! Every bound of the iSCSI layer, named in one place.
//!
//! A limit protects the target from an initiator (or a corrupted stream) that
//! would make it allocate or loop without end. Values the RFC fixes carry the
//! section that fixes them; values that are our policy say why they were
//! chosen.

/// Basic Header Segment length, RFC 7143 §11.2.1.
pub const BHS_LEN: usize = 48;

/// A CRC32C header or data digest, RFC 7143 §11.1.
pub const DIGEST_LEN: usize = 4;

/// TotalAHSLength is one byte counting 4-byte words (RFC 7143 §11.2.1.4), so
/// the AHS can never exceed this many bytes.
pub const MAX_AHS_BYTES: usize = 255 * 4;

/// The largest data segment a receiver may declare (MaxRecvDataSegmentLength
/// is 512 to 2^24-1, RFC 7143 §13.12); DataSegmentLength is a 24-bit field.
pub const MAX_DATA_SEGMENT_FIELD: u32 = (1 << 24) - 1;

/// Smallest value of MaxRecvDataSegmentLength / MaxBurstLength /
/// FirstBurstLength, RFC 7143 §13.12-§13.14.
pub const MIN_SEGMENT_OR_BURST: u32 = 512;

/// During the login phase both sides use the default
/// MaxRecvDataSegmentLength of 8192 (RFC 7143 §13.12): the declared value
/// only applies once the connection is in full feature phase.
pub const LOGIN_MAX_RECV_DATA_SEGMENT: u32 = 8192;

/// The data segment we accept in full feature phase (declared as our
/// MaxRecvDataSegmentLength). 256 KiB keeps one Data-Out PDU per connection
/// well below the per-connection in-flight cap.
pub const OUR_MAX_RECV_DATA_SEGMENT: u32 = 256 * 1024;

/// Largest MaxBurstLength we accept (1 MiB): bounds one R2T's buffer.
pub const OUR_MAX_BURST: u32 = 1024 * 1024;

/// Largest FirstBurstLength we accept (64 KiB): bounds unsolicited data held
/// per command before the command is dispatched.
pub const OUR_FIRST_BURST: u32 = 64 * 1024;

/// Longest key name, RFC 7143 §6.1 ("key-name ... MUST NOT exceed 63 bytes").
pub const MAX_KEY_BYTES: usize = 63;

/// Longest value we parse. RFC 7143 §6.1 bounds ordinary values at 255 bytes
/// but CHAP_C/CHAP_R are large-binary-values of up to 1024 binary bytes
/// (§12.1.3), which encode to at most 2 + 2 * 1024 hex characters.
pub const MAX_VALUE_BYTES: usize = 2 + 2 * 1024;

/// Bytes of key=value text accumulated across C-bit continuations of one
/// login or text request (RFC 7143 §6.3, §11.10.2). A login a real initiator
/// sends is about 1 KiB; 64 KiB leaves room and still caps memory.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Key=value pairs in one (possibly multi-PDU) request. Linux open-iscsi sends
/// about 20 in its largest login request. 64 answers of at most
/// 63 + "=NotUnderstood" bytes still fit one 8192-byte login response.
pub const MAX_KEYS: usize = 64;

/// Login/Text exchanges in one login phase before we give up: every step of
/// the RFC's login completes in a handful, so an initiator looping forever is
/// refused instead of holding the connection.
pub const MAX_LOGIN_EXCHANGES: u32 = 32;

/// CHAP challenge length we send (RFC 7143 §12.1.3 asks for a challenge at
/// least as long as the hash; 32 bytes covers SHA-256).
pub const CHAP_CHALLENGE_BYTES: usize = 32;

/// Largest binary CHAP_C / CHAP_R value accepted, RFC 7143 §12.1.3.
pub const CHAP_MAX_BINARY_BYTES: usize = 1024;

/// Shortest CHAP secret we let an operator configure (RFC 7143 §12.1.3:
/// "at least 96 bits").
pub const CHAP_MIN_SECRET_BYTES: usize = 12;

/// Longest CHAP secret we let an operator configure: keeps secrets within one
/// value's bounds.
pub const CHAP_MAX_SECRET_BYTES: usize = 255;

/// Longest iSCSI name, RFC 7143 §4.2.7.1 ("MUST NOT be larger than 223
/// bytes").
pub const MAX_ISCSI_NAME_BYTES: usize = 223;

/// Immediate commands (I bit) in flight per session, outside the CmdSN
/// window: initiators use them for task management and pings, a handful at
/// a time (RFC 7143 §3.2.2.1 lets the target refuse more with Reject 0x06).
pub const MAX_IMMEDIATE_COMMANDS: u32 = 4;

/// Largest command window (queue depth) a session may be configured with.
pub const MAX_QUEUE_DEPTH: u32 = 256;

/// Write data a connection buffers at once (solicited with R2Ts and not yet
/// handed to the logical unit). Writes beyond it wait for their R2Ts, so
/// a connection's memory stays bounded whatever the initiator queues.
pub const MAX_WRITE_BUFFER_BYTES: u32 = 64 * 1024 * 1024;

/// Expected Data Transfer Length of one command we accept (16 MiB): above
/// what we report as the maximum transfer length in the Block Limits VPD
/// page, so only a misbehaving initiator reaches it.
pub const MAX_COMMAND_DATA_BYTES: u32 = 16 * 1024 * 1024;
