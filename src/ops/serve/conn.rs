//! One client connection: the handshake (options until `NBD_OPT_GO` or
//! `NBD_OPT_EXPORT_NAME`), then its requests until it disconnects.
//!
//! Invariants:
//! * **Malformed input ends this connection only**, with one log line; nothing a client sends
//!   makes the server panic or stop serving others.
//! * **Nothing a client claims sizes memory**: option data above [`MAX_OPTION`] is skipped and
//!   refused, a write above [`MAX_PAYLOAD`] ends the connection, reads are answered in pieces
//!   (structured replies) or within the server's shared byte budget (simple replies), and at
//!   most `in_flight` requests of a connection wait for an answer at once.
//! * **Every wait has a deadline**: the whole handshake, each message once it has begun, and
//!   (read-only exports) an idle client.
//! * **A damaged chunk is an error for the read that meets it** (`NBD_EIO`, with a message and
//!   a log line naming the chunk), never zeros; the connection and every other read go on.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::error::Error;
use crate::nbd::handshake::{self as hs, opt, rep, ClientFlags, Info, Opt, OptionHeader};
use crate::nbd::transmission::{self as tx, cmd_flag, errno, flag, state, Command, Request};

use super::exports::{Export, Extent, Refused};
use super::wire::{Plain, Socket, Tls, Wire};
use super::{Shared, MAX_PAYLOAD};

/// Option data the server reads at most (longer options are skipped and refused).
pub(crate) const MAX_OPTION: usize = 64 * 1024;
/// The id of `base:allocation` in block status replies.
const ALLOCATION_ID: u32 = 1;
/// Read replies go out in pieces of at most this many bytes.
const PIECE: u64 = 1 << 20;
/// Block status runs per reply at most.
const MAX_RUNS: usize = 4096;
/// `NBD_CMD_CACHE` reads ahead at most this much per request.
const MAX_CACHE: u64 = 64 << 20;

/// Why a connection ends early.
enum End {
    /// The client left (EOF, `NBD_OPT_ABORT`, `NBD_CMD_DISC`).
    Left,
    /// It broke the protocol, timed out or the link failed.
    Hangup(String),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => End::Left,
            std::io::ErrorKind::TimedOut => End::Hangup("timed out waiting for the client".into()),
            _ => End::Hangup(format!("connection failed: {e}")),
        }
    }
}

/// Serves one accepted connection to its end.
pub(crate) fn serve(shared: Arc<Shared>, sock: Socket) {
    let peer = sock.peer();
    tracing::debug!("{peer}: connected");
    match handshake(&shared, &sock) {
        Ok(None) | Err(End::Left) => tracing::debug!("{peer}: left"),
        Err(End::Hangup(why)) => tracing::warn!("{peer}: {why}; disconnected"),
        Ok(Some(t)) => {
            let t = Arc::new(t);
            tracing::info!(
                "{peer}: serving '{}'{}",
                crate::archive::sanitized(&t.export.name),
                if t.structured {
                    ""
                } else {
                    " (simple replies)"
                }
            );
            let end = transmit(&t);
            t.in_flight.wait_idle();
            match end {
                End::Left => tracing::info!(
                    "{peer}: done with '{}'",
                    crate::archive::sanitized(&t.export.name)
                ),
                End::Hangup(why) => tracing::warn!("{peer}: {why}; disconnected"),
            }
        }
    }
}

/// Negotiation state.
struct Negotiation<'a> {
    shared: &'a Shared,
    sock: &'a Socket,
    wire: Arc<dyn Wire>,
    deadline: Instant,
    tls: bool,
    structured: bool,
    /// The export `base:allocation` was selected for.
    meta: Option<String>,
    no_zeroes: bool,
}

impl Negotiation<'_> {
    fn send(&self, b: &[u8]) -> Result<(), End> {
        Ok(self.wire.write_all(&[b])?)
    }

    fn error(&self, option: u32, kind: u32, message: &str) -> Result<(), End> {
        self.send(&hs::reply_error(option, kind, message))
    }

    fn ack(&self, option: u32) -> Result<(), End> {
        self.send(&hs::reply(option, rep::ACK, &[]))
    }

    /// Reads the next option; `None` for one too long to read (already skipped and refused).
    fn next(&self) -> Result<Option<(OptionHeader, Vec<u8>)>, End> {
        let mut h = [0u8; OptionHeader::LEN];
        self.wire.read_exact(&mut h, Some(self.deadline))?;
        let h = OptionHeader::parse(&h).map_err(|e| End::Hangup(e.to_string()))?;
        if h.length as usize > MAX_OPTION {
            if h.option == opt::EXPORT_NAME {
                return Err(End::Hangup("an export name over 4096 bytes".into()));
            }
            let mut left = h.length as usize;
            let mut sink = vec![0u8; 64 * 1024];
            while left > 0 {
                let n = left.min(sink.len());
                self.wire.read_exact(&mut sink[..n], Some(self.deadline))?;
                left -= n;
            }
            self.error(h.option, rep::ERR_TOO_BIG, "option data too long")?;
            return Ok(None);
        }
        let mut data = vec![0u8; h.length as usize];
        self.wire.read_exact(&mut data, Some(self.deadline))?;
        Ok(Some((h, data)))
    }

    /// The transmission flags of `e` for this client.
    fn flags(&self, e: &Export) -> u16 {
        let mut f = flag::HAS_FLAGS | flag::SEND_FLUSH | flag::SEND_CACHE | flag::CAN_MULTI_CONN;
        if self.structured {
            f |= flag::SEND_DF;
        }
        if e.read_only() {
            f |= flag::READ_ONLY;
        } else {
            f |= flag::SEND_FUA | flag::SEND_TRIM | flag::SEND_WRITE_ZEROES | flag::SEND_FAST_ZERO;
        }
        f
    }

    fn open(&self, option: u32, name: &str) -> Result<Option<Export>, End> {
        match self.shared.exports.open(name) {
            Ok(e) => Ok(Some(e)),
            Err(Refused::Unknown(why)) => {
                self.error(option, rep::ERR_UNKNOWN, &why)?;
                Ok(None)
            }
            Err(Refused::Failed(e)) => {
                tracing::error!("export '{}': {e}", crate::archive::sanitized(name));
                self.error(option, rep::ERR_UNKNOWN, &e.to_string())?;
                Ok(None)
            }
        }
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`: the export's details; for GO, the export.
    fn info(&self, option: u32, r: &hs::ExportRequest) -> Result<Option<Export>, End> {
        let Some(e) = self.open(option, &r.name)? else {
            return Ok(None);
        };
        self.send(
            &Info::Export {
                size: e.size(),
                flags: self.flags(&e),
            }
            .reply(option),
        )?;
        if r.info.contains(&hs::info::NAME) {
            self.send(&Info::Name(e.name.clone()).reply(option))?;
        }
        if r.info.contains(&hs::info::DESCRIPTION) {
            self.send(&Info::Description(e.description.clone()).reply(option))?;
        }
        // Always: the server takes any alignment, prefers whole overlay blocks for writes.
        let preferred = if e.read_only() {
            4096
        } else {
            super::overlay::BLOCK as u32
        };
        self.send(
            &Info::BlockSize {
                minimum: 1,
                preferred,
                maximum: MAX_PAYLOAD as u32,
            }
            .reply(option),
        )?;
        self.ack(option)?;
        Ok((option == opt::GO).then_some(e))
    }

    fn meta(&mut self, option: u32, m: &hs::MetaRequest) -> Result<(), End> {
        let set = option == opt::SET_META_CONTEXT;
        if set {
            self.meta = None;
        }
        if !self.structured {
            return self.error(
                option,
                rep::ERR_INVALID,
                "negotiate structured replies before metadata contexts",
            );
        }
        if self.open(option, &m.export)?.is_none() {
            return Ok(());
        }
        let wanted = if m.queries.is_empty() {
            !set
        } else {
            m.queries
                .iter()
                .any(|q| hs::selects_base_allocation(q, !set))
        };
        if wanted {
            let id = if set { ALLOCATION_ID } else { 0 };
            self.send(&hs::reply_meta_context(option, id, hs::BASE_ALLOCATION))?;
            if set {
                self.meta = Some(m.export.clone());
            }
        }
        self.ack(option)
    }

    /// Answers one option; `Some` once the client entered transmission with an export (and
    /// the name it gave).
    fn option(&mut self, h: OptionHeader, data: &[u8]) -> Result<Option<(Export, String)>, End> {
        let o = h.option;
        if self.shared.stopping() && o != opt::ABORT {
            self.error(o, rep::ERR_SHUTDOWN, "the server is stopping")?;
            return Ok(None);
        }
        if self.shared.tls.is_some() && !self.tls {
            match o {
                opt::STARTTLS | opt::ABORT => {}
                opt::EXPORT_NAME => return Err(End::Hangup("TLS is required".into())),
                _ => {
                    self.error(o, rep::ERR_TLS_REQD, "TLS is required: connect with nbds:// (or nbds+unix://) and the server's CA certificate")?;
                    return Ok(None);
                }
            }
        }
        let parsed = match Opt::parse(o, data) {
            Ok(p) => p,
            Err(e) if o == opt::EXPORT_NAME => return Err(End::Hangup(e.to_string())),
            Err(e) => {
                self.error(o, rep::ERR_INVALID, &e.to_string())?;
                return Ok(None);
            }
        };
        match parsed {
            Opt::Abort => {
                let _ = self.ack(o);
                Err(End::Left)
            }
            Opt::List => {
                for e in self.shared.exports.list() {
                    self.send(&hs::reply_server(&e.name, &e.description))?;
                }
                self.ack(o).map(|()| None)
            }
            Opt::StartTls => self.start_tls(o).map(|()| None),
            Opt::StructuredReply => {
                self.structured = true;
                self.ack(o).map(|()| None)
            }
            Opt::ListMetaContext(m) | Opt::SetMetaContext(m) => self.meta(o, &m).map(|()| None),
            Opt::Info(r) | Opt::Go(r) => Ok(self.info(o, &r)?.map(|e| (e, r.name))),
            Opt::ExportName(name) => match self.shared.exports.open(&name) {
                Ok(e) => {
                    let flags = self.flags(&e);
                    self.send(&hs::export_name_reply(e.size(), flags, self.no_zeroes))?;
                    Ok(Some((e, name)))
                }
                Err(Refused::Unknown(why)) => Err(End::Hangup(why)),
                Err(Refused::Failed(e)) => Err(End::Hangup(e.to_string())),
            },
            Opt::Unknown(_) => self
                .error(o, rep::ERR_UNSUP, "option not supported by wyng serve")
                .map(|()| None),
        }
    }

    fn start_tls(&mut self, o: u32) -> Result<(), End> {
        let Some(config) = self.shared.tls.clone() else {
            return self.error(o, rep::ERR_POLICY, "this server does not offer TLS");
        };
        if self.tls {
            return self.error(o, rep::ERR_INVALID, "TLS is already on");
        }
        self.ack(o)?;
        self.wire = Arc::new(Tls::new(self.sock, config, self.shared.limits.io)?);
        self.tls = true;
        // Nothing negotiated before TLS carries over (the protocol says so).
        self.structured = false;
        self.meta = None;
        Ok(())
    }
}

/// Greeting and options; the transmission state once the client chose an export.
fn handshake(shared: &Arc<Shared>, sock: &Socket) -> Result<Option<Transfer>, End> {
    let wire: Arc<dyn Wire> = Arc::new(Plain::new(sock, shared.limits.io)?);
    let deadline = Instant::now() + shared.limits.handshake;
    wire.write_all(&[&hs::greeting()])?;
    let mut f = [0u8; 4];
    wire.read_exact(&mut f, Some(deadline))?;
    let flags = ClientFlags::parse(f).map_err(|e| End::Hangup(e.to_string()))?;
    let mut n = Negotiation {
        shared,
        sock,
        wire,
        deadline,
        tls: false,
        structured: false,
        meta: None,
        no_zeroes: flags.no_zeroes,
    };
    if shared.tls.is_some() && !flags.fixed_newstyle {
        return Err(End::Hangup(
            "TLS is required, and the client cannot negotiate it".into(),
        ));
    }
    loop {
        let Some((h, data)) = n.next()? else {
            continue;
        };
        if let Some((export, name)) = n.option(h, &data)? {
            // The protocol: block status only for the export the contexts were set for.
            let block_status = n.meta.as_deref() == Some(name.as_str());
            let flags = n.flags(&export);
            return Ok(Some(Transfer {
                shared: shared.clone(),
                wire: n.wire,
                structured: n.structured,
                block_status,
                flags,
                export,
                in_flight: InFlight::new(shared.limits.in_flight),
            }));
        }
    }
}

/// Requests a connection may have waiting for an answer at once.
pub(crate) struct InFlight {
    n: Mutex<usize>,
    cv: Condvar,
    max: usize,
}

impl InFlight {
    fn new(max: usize) -> InFlight {
        InFlight {
            n: Mutex::new(0),
            cv: Condvar::new(),
            max: max.max(1),
        }
    }

    fn acquire(&self) {
        let mut n = self.n.lock();
        while *n >= self.max {
            self.cv.wait(&mut n);
        }
        *n += 1;
    }

    fn release(&self) {
        *self.n.lock() -= 1;
        self.cv.notify_all();
    }

    fn wait_idle(&self) {
        let mut n = self.n.lock();
        while *n > 0 {
            self.cv.wait(&mut n);
        }
    }
}

/// A connection in transmission.
struct Transfer {
    shared: Arc<Shared>,
    wire: Arc<dyn Wire>,
    export: Export,
    structured: bool,
    /// `base:allocation` was selected for this export.
    block_status: bool,
    flags: u16,
    in_flight: InFlight,
}

/// An error answer: the NBD error value, and a message for the user (structured replies).
struct Fail(u32, String);

impl Fail {
    fn new(code: u32, m: impl Into<String>) -> Fail {
        Fail(code, m.into())
    }
}

/// The NBD error value for a library error: no space where the overlay's disk is full, else
/// an I/O error.
fn errno_of(e: &Error) -> u32 {
    let source = match e {
        Error::LocalState { source, .. } | Error::Io { source, .. } => Some(source),
        _ => None,
    };
    match source.and_then(|s| s.raw_os_error()) {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => errno::ENOSPC,
        _ => errno::EIO,
    }
}

impl Transfer {
    fn send(&self, parts: &[&[u8]]) -> Result<(), End> {
        Ok(self.wire.write_all(parts)?)
    }

    fn ok(&self, r: &Request) -> Result<(), End> {
        self.send(&[&tx::simple_reply(0, r.cookie)])
    }

    fn fail(&self, r: &Request, f: Fail, offset: Option<u64>) -> Result<(), End> {
        if self.structured {
            self.send(&[&tx::error_chunk(r.cookie, f.0, &f.1, offset)])
        } else {
            self.send(&[&tx::simple_reply(f.0, r.cookie)])
        }
    }

    fn answer(&self, r: &Request, res: Result<(), Fail>) -> Result<(), End> {
        match res {
            Ok(()) => self.ok(r),
            Err(f) => self.fail(r, f, None),
        }
    }

    /// A library error for the user, logged once with the export's name.
    fn failed(&self, what: &str, offset: u64, e: &Error) -> Fail {
        tracing::error!(
            "'{}': {what} at byte {offset}: {e}",
            crate::archive::sanitized(&self.export.name)
        );
        Fail::new(errno_of(e), e.to_string())
    }

    /// What the protocol and the export allow of a request, before any work.
    fn check(&self, r: &Request) -> Result<(), Fail> {
        if r.flags & !r.command.valid_flags() != 0 {
            return Err(Fail::new(
                errno::EINVAL,
                "a command flag not valid on this command",
            ));
        }
        if r.flags & cmd_flag::DF != 0 && self.flags & flag::SEND_DF == 0 {
            return Err(Fail::new(errno::EINVAL, "DF needs structured replies"));
        }
        let size = self.export.size();
        let beyond = r.end().is_none_or(|e| e > size);
        let writes = matches!(
            r.command,
            Command::Write | Command::WriteZeroes | Command::Trim
        );
        if writes && self.export.read_only() {
            return Err(Fail::new(
                errno::EPERM,
                "this export is read-only (serve it with an overlay to write)",
            ));
        }
        if beyond {
            let code = if matches!(r.command, Command::Write | Command::WriteZeroes) {
                errno::ENOSPC
            } else {
                errno::EINVAL
            };
            return Err(Fail::new(code, "beyond the end of the export"));
        }
        match r.command {
            Command::Read if r.length as u64 > MAX_PAYLOAD => Err(Fail::new(
                if self.structured {
                    errno::EOVERFLOW
                } else {
                    errno::EINVAL
                },
                "a read over 32 MiB",
            )),
            Command::BlockStatus if !self.block_status => Err(Fail::new(
                errno::EINVAL,
                "select base:allocation (NBD_OPT_SET_META_CONTEXT) for this export first",
            )),
            Command::WriteZeroes
                if r.flags & cmd_flag::FAST_ZERO != 0 && r.flags & cmd_flag::NO_HOLE != 0 =>
            {
                Err(Fail::new(
                    errno::ENOTSUP,
                    "zeros written in full are not fast",
                ))
            }
            Command::Other(_) => Err(Fail::new(errno::EINVAL, "unknown command")),
            _ => Ok(()),
        }
    }

    /// A write: its data read in pieces (never held whole), each written to the overlay.
    fn write(&self, r: &Request) -> Result<(), End> {
        if r.length as u64 > MAX_PAYLOAD {
            return Err(End::Hangup(format!(
                "a write of {} bytes, over the 32 MiB the server takes",
                r.length
            )));
        }
        let mut problem = self.check(r).err();
        let limit = self.shared.limits.io;
        let mut buf = vec![0u8; (r.length as u64).min(PIECE) as usize];
        let (mut pos, end) = (r.offset, r.offset + r.length as u64);
        while pos < end {
            // Pieces end on overlay blocks: no block is copied up twice for one write.
            let block = super::overlay::BLOCK;
            let to = end.min(
                ((pos + PIECE) / block * block)
                    .max(pos + 1)
                    .min(pos + PIECE),
            );
            let piece = &mut buf[..(to - pos) as usize];
            self.wire.read_exact(piece, Some(Instant::now() + limit))?;
            if problem.is_none() {
                if let Err(e) = self.export.write(pos, piece) {
                    problem = Some(self.failed("write", pos, &e));
                }
            }
            pos = to;
        }
        if problem.is_none() && r.flags & cmd_flag::FUA != 0 {
            problem = self
                .export
                .flush()
                .err()
                .map(|e| self.failed("flush", 0, &e));
        }
        self.answer(r, problem.map_or(Ok(()), Err))
    }

    /// Writes, zeroing, trimming and flushes are done in order by the connection's thread.
    fn inline(&self, r: &Request) -> Result<(), End> {
        if let Err(f) = self.check(r) {
            return self.fail(r, f, None);
        }
        let res = match r.command {
            Command::Flush => self.export.flush().map_err(|e| self.failed("flush", 0, &e)),
            Command::Trim => self
                .export
                .trim(r.offset, r.length as u64)
                .map_err(|e| self.failed("trim", r.offset, &e)),
            Command::WriteZeroes => self
                .export
                .zero(r.offset, r.length as u64, r.flags & cmd_flag::NO_HOLE != 0)
                .map_err(|e| self.failed("write zeroes", r.offset, &e)),
            _ => Ok(()),
        };
        let res = match res {
            Ok(()) if r.flags & cmd_flag::FUA != 0 && r.command != Command::Flush => {
                self.export.flush().map_err(|e| self.failed("flush", 0, &e))
            }
            other => other,
        };
        self.answer(r, res)
    }

    /// A read answered whole: simple replies, or structured with DF (one content chunk).
    fn read_whole(&self, r: &Request) -> Result<(), End> {
        let _budget = self.shared.budget.take(r.length as u64);
        let mut buf = vec![0u8; r.length as usize];
        match self.export.read(r.offset, &mut buf) {
            Ok(()) if self.structured => self.send(&[
                &tx::offset_data_header(r.cookie, r.offset, r.length, true),
                &buf,
            ]),
            Ok(()) => self.send(&[&tx::simple_reply(0, r.cookie), &buf]),
            Err(e) => {
                let f = self.failed("read", r.offset, &e);
                self.fail(r, f, Some(r.offset))
            }
        }
    }

    /// A read answered in structured pieces: holes as holes, data a piece at a time.
    fn read_pieces(&self, r: &Request) -> Result<(), End> {
        let end = r.offset + r.length as u64;
        let mut pos = r.offset;
        while pos < end {
            let runs = match self.export.extents(pos, end - pos, 64) {
                Ok(runs) => runs,
                Err(e) => {
                    let f = self.failed("read", pos, &e);
                    return self.fail(r, f, Some(pos));
                }
            };
            for (kind, len) in runs {
                let stop = pos + len;
                if kind == Extent::Hole {
                    self.send(&[&tx::offset_hole(r.cookie, pos, len as u32, stop == end)])?;
                    pos = stop;
                    continue;
                }
                while pos < stop {
                    let to = stop.min((pos / PIECE + 1) * PIECE);
                    let mut buf = vec![0u8; (to - pos) as usize];
                    if let Err(e) = self.export.read(pos, &mut buf) {
                        let f = self.failed("read", pos, &e);
                        return self.fail(r, f, Some(pos));
                    }
                    self.send(&[
                        &tx::offset_data_header(r.cookie, pos, buf.len() as u32, to == end),
                        &buf,
                    ])?;
                    pos = to;
                }
            }
        }
        Ok(())
    }

    fn read(&self, r: &Request) -> Result<(), End> {
        if r.length == 0 {
            return if self.structured {
                self.send(&[&tx::none_chunk(r.cookie)])
            } else {
                self.ok(r)
            };
        }
        if !self.structured || r.flags & cmd_flag::DF != 0 {
            self.read_whole(r)
        } else {
            self.read_pieces(r)
        }
    }

    fn block_status(&self, r: &Request) -> Result<(), End> {
        let max = if r.flags & cmd_flag::REQ_ONE != 0 {
            1
        } else {
            MAX_RUNS
        };
        let len = (r.length as u64).max(1).min(self.export.size() - r.offset);
        if len == 0 {
            return self.fail(r, Fail::new(errno::EINVAL, "no length"), None);
        }
        match self.export.extents(r.offset, len, max) {
            Ok(runs) => {
                let extents: Vec<tx::Extent> = runs
                    .iter()
                    .map(|(k, l)| tx::Extent {
                        length: *l as u32,
                        flags: match k {
                            Extent::Data => 0,
                            Extent::Hole => state::HOLE | state::ZERO,
                        },
                    })
                    .collect();
                self.send(&[&tx::block_status(r.cookie, ALLOCATION_ID, &extents, true)])
            }
            Err(e) => {
                let f = self.failed("block status", r.offset, &e);
                self.fail(r, f, Some(r.offset))
            }
        }
    }

    /// `NBD_CMD_CACHE`: reads ahead (into the chunk cache) what the client will want.
    fn cache(&self, r: &Request) -> Result<(), End> {
        let end = r.offset + (r.length as u64).min(MAX_CACHE);
        let mut pos = r.offset;
        let step = self.export.chunksize().max(PIECE);
        let mut buf = vec![0u8; step.min(end - pos) as usize];
        while pos < end {
            let to = end.min(pos + step);
            let piece = &mut buf[..(to - pos) as usize];
            if let Err(e) = self.export.read(pos, piece) {
                let f = self.failed("cache", pos, &e);
                return self.fail(r, f, Some(pos));
            }
            pos = to;
        }
        self.ok(r)
    }

    /// Reads, block status and cache requests are answered by the server's workers.
    fn worker(self: &Arc<Self>, r: Request) {
        let t = self.clone();
        self.in_flight.acquire();
        self.shared.pool.run(Box::new(move || {
            let res = match t.check(&r) {
                Err(f) => t.fail(&r, f, None),
                Ok(()) => match r.command {
                    Command::Read => t.read(&r),
                    Command::BlockStatus => t.block_status(&r),
                    _ => t.cache(&r),
                },
            };
            if let Err(End::Hangup(why)) = res {
                tracing::debug!("reply not sent: {why}");
            }
            t.in_flight.release();
        }));
    }
}

/// The request loop, until the client disconnects or breaks the protocol.
fn transmit(t: &Arc<Transfer>) -> End {
    let idle = if t.export.read_only() {
        t.shared.limits.idle
    } else {
        t.shared.limits.idle_writable
    };
    loop {
        let mut h = [0u8; Request::LEN];
        if let Err(e) = t.wire.read_exact(&mut h, idle.map(|d| Instant::now() + d)) {
            return End::from(e);
        }
        let r = match Request::parse(&h) {
            Ok(r) => r,
            Err(e) => return End::Hangup(e.to_string()),
        };
        if t.shared.stopping() && r.command != Command::Disc {
            if r.command == Command::Write {
                // Its data must still be read to answer the next request in step.
                return End::Hangup("the server is stopping".into());
            }
            if let Err(e) = t.fail(
                &r,
                Fail::new(errno::ESHUTDOWN, "the server is stopping"),
                None,
            ) {
                return e;
            }
            continue;
        }
        let res = match r.command {
            Command::Disc => return End::Left,
            Command::Read | Command::BlockStatus | Command::Cache => {
                t.worker(r);
                Ok(())
            }
            Command::Write => t.write(&r),
            _ => t.inline(&r),
        };
        if let Err(e) = res {
            return e;
        }
    }
}
