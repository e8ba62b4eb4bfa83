//! HTTP/1.1 on an upstream connection, driven by the request that uses it: the request head is
//! written in one buffer, the response head parsed in place (httparse), and the response body
//! read from the socket by whoever reads the body — no connection task and no channel between
//! the request and its connection, which is where a general-purpose client spends its time.
//!
//! Framing follows RFC 9112 §6: no body for `HEAD`, 1xx, 204 and 304; `Transfer-Encoding`
//! ending in `chunked` is decoded; else `Content-Length`; else the body runs to the close.
//! Only a message read to its end leaves the connection fit for the next one.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Body, BoxError};

/// The largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines accepted in a response head.
const MAX_HEADERS: usize = 128;
/// How much room a read asks for.
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// An upstream connection: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the node closed (or wrote on) this idle connection: it is then unfit for a
    /// request. Asks the reactor only, no system call.
    pub fn hung_up(&self) -> bool {
        let tcp = match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_read_ready(&mut cx).is_ready()
    }
}

/// A connection and what has been read from it but not yet used.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    read: BytesMut,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection closed before a byte of the response came: a reused connection the node
    /// had closed while it was idle.
    #[error("connection closed before the response")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("request body: {0}")]
    Body(BoxError),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

/// A response head, and how its body is framed.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub lines: Lines,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// A response's header lines as the node sent them, but for the connection's own — the
/// hop-by-hop fields, those `Connection` names, and the body's framing, which is the client
/// connection's to choose (a bodiless answer keeps its declared `Content-Length`). They are
/// written to an HTTP/1.1 client as they are, and made a header map only for whoever reads
/// them: a response plugin, or hyper's server.
#[derive(Debug, Default)]
pub struct Lines {
    /// The response head the lines are in.
    head: Bytes,
    /// Where each line's name and value lie in `head`.
    at: Vec<(Range<u32>, Range<u32>)>,
}

impl Lines {
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Each line's name (as sent, in any case) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let line = |(name, value): &(Range<u32>, Range<u32>)| {
            let slice = |r: &Range<u32>| &self.head[r.start as usize..r.end as usize];
            (slice(name), slice(value))
        };
        self.at.iter().map(line)
    }

    /// The lines as a header map (the parser took only valid names and values).
    pub fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.at.len());
        for (name, value) in &self.at {
            let name = HeaderName::from_bytes(&self.head[name.start as usize..name.end as usize]);
            let value = self.head.slice(value.start as usize..value.end as usize);
            if let (Ok(name), Ok(value)) = (name, HeaderValue::from_maybe_shared(value)) {
                map.append(name, value);
            }
        }
        map
    }

    /// The lines of a response head in `text` (for tests).
    #[cfg(test)]
    pub(crate) fn of_head(text: &str) -> Lines {
        let head = parse_head(&mut BytesMut::from(text), &Method::GET);
        head.ok()
            .flatten()
            .map(|head| head.lines)
            .unwrap_or_default()
    }

    /// Adds the lines to `map`, whose own fields replace same-named lines.
    pub fn merge_into(self, map: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        let own = std::mem::replace(map, self.into_map());
        if !own.is_empty() {
            map.extend(own);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// This many bytes.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the node closes.
    Close,
    /// A switched protocol (101): the connection is the tunnel's now.
    Upgrade,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
}

impl Connection {
    pub fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            read: BytesMut::new(),
        }
    }

    pub fn hung_up(&self) -> bool {
        !self.read.is_empty() || self.stream.hung_up()
    }

    /// The connection as a switched protocol takes it over: what was read already comes first.
    pub fn into_stream(self) -> Rewind<Stream> {
        Rewind {
            read: self.read.freeze(),
            io: self.stream,
        }
    }

    /// Writes a request (`head` as [`Request`] made it, then `body`) and reads the response
    /// head. A body is written while the response is awaited, so a node that answers early (a
    /// 413, say) is heard; the connection then cannot be reused.
    pub async fn exchange(
        &mut self,
        method: &Method,
        head: &[u8],
        body: Body,
        chunked: bool,
    ) -> Result<Head, Error> {
        if body.is_end_stream() {
            if let Err(e) = self.stream.write_all(head).await {
                return Err(match e.kind() {
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::Closed,
                    _ => e.into(),
                });
            }
            return read_head(&mut self.stream, &mut self.read, method).await;
        }
        let (mut reader, mut writer) = tokio::io::split(&mut self.stream);
        let write = async {
            writer.write_all(head).await?;
            write_body(&mut writer, body, chunked).await
        };
        let read = read_head(&mut reader, &mut self.read, method);
        tokio::pin!(write, read);
        let mut written = false;
        loop {
            tokio::select! {
                biased;
                head = &mut read => {
                    let mut head = head?;
                    head.keep_alive &= written;
                    return Ok(head);
                }
                done = &mut write, if !written => {
                    done?;
                    written = true;
                }
            }
        }
    }

    /// The next frame of a body framed as `framing` (which it advances), or `None` at its end.
    pub fn poll_body(
        &mut self,
        framing: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            match framing {
                Framing::Empty | Framing::Upgrade | Framing::Length(0) => {
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !self.read.is_empty() {
                        let n = (*left).min(self.read.len() as u64);
                        *left -= n;
                        return Poll::Ready(Some(Ok(self.read.split_to(n as usize).freeze())));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Invalid("body cut short"))));
                    }
                }
                Framing::Close => {
                    if !self.read.is_empty() {
                        return Poll::Ready(Some(Ok(self.read.split().freeze())));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        *framing = Framing::Empty;
                    }
                }
                Framing::Chunked(chunk) => {
                    if let Some(data) = decode_chunk(&mut self.read, chunk)? {
                        if data.is_empty() {
                            *framing = Framing::Empty; // the trailers' end
                            continue;
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Invalid("chunked body cut short"))));
                    }
                }
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}

/// Decodes what has been read of a chunked body: `Some(data)` when a chunk's bytes are
/// ready (empty at the body's end), `None` when more must be read.
fn decode_chunk(read: &mut BytesMut, chunk: &mut Chunk) -> Result<Option<Bytes>, Error> {
    loop {
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(read) {
                Ok(httparse::Status::Complete((line, 0))) => {
                    read.advance(line);
                    *chunk = Chunk::Trailer;
                }
                Ok(httparse::Status::Complete((line, size))) => {
                    read.advance(line);
                    *chunk = Chunk::Data(size);
                }
                Ok(httparse::Status::Partial) if read.len() < 1024 => return Ok(None),
                _ => return Err(Error::Invalid("bad chunk size")),
            },
            Chunk::Data(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(read.len() as u64);
                *left -= n;
                if *left == 0 {
                    *chunk = Chunk::DataEnd;
                }
                return Ok(Some(read.split_to(n as usize).freeze()));
            }
            Chunk::DataEnd => match read.first() {
                None => return Ok(None),
                Some(b'\n') => {
                    read.advance(1);
                    *chunk = Chunk::Size;
                }
                Some(b'\r') if read.len() < 2 => return Ok(None),
                Some(b'\r') if read[1] == b'\n' => {
                    read.advance(2);
                    *chunk = Chunk::Size;
                }
                Some(_) => return Err(Error::Invalid("chunk data overruns its size")),
            },
            Chunk::Trailer => {
                // Trailer fields are not forwarded.
                let Some(end) = read.iter().position(|&b| b == b'\n') else {
                    if read.len() > MAX_HEAD {
                        return Err(Error::Invalid("trailers too large"));
                    }
                    return Ok(None);
                };
                let blank = read[..end].iter().all(|&b| b == b'\r');
                read.advance(end + 1);
                if blank {
                    return Ok(Some(Bytes::new()));
                }
            }
        }
    }
}

/// A request ready for a connection: its head already written, and its body.
pub struct Request {
    pub method: Method,
    pub head: Vec<u8>,
    pub body: Body,
    /// Whether the body is sent chunked (its length unknown).
    pub chunked: bool,
}

impl Request {
    /// Starts a head: the request line (`target` in origin form).
    pub fn start(method: Method, target: &str, body: Body) -> Request {
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        Request {
            method,
            head,
            body,
            chunked: false,
        }
    }

    /// Adds a header line; a value with control characters (a CR LF that would start a line of
    /// its own) is left out.
    pub fn header(&mut self, name: &str, value: &[u8]) {
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return;
        }
        self.line(name.as_bytes(), value);
    }

    /// Adds a header line from the `http` types, which keep control characters out of values.
    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.line(name.as_str().as_bytes(), value.as_bytes());
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.head.reserve(name.len() + value.len() + 4);
        self.head.extend_from_slice(name);
        self.head.extend_from_slice(b": ");
        self.head.extend_from_slice(value);
        self.head.extend_from_slice(b"\r\n");
    }

    /// Ends the head with the body's framing: none when `declared` (the headers carry a
    /// `Content-Length`), else its exact size when known, else chunked.
    pub fn end(mut self, declared: bool) -> Request {
        if !declared {
            match self.body.size_hint().exact() {
                Some(0) if !matches!(self.method, Method::POST | Method::PUT | Method::PATCH) => {}
                Some(length) => self.header("content-length", length.to_string().as_bytes()),
                None => {
                    self.header("transfer-encoding", b"chunked");
                    self.chunked = true;
                }
            }
        }
        self.head.extend_from_slice(b"\r\n");
        self
    }
}

/// A request made with the `http` types (origin-form URI, with its `Host`).
impl From<http::Request<Body>> for Request {
    fn from(request: http::Request<Body>) -> Request {
        let (parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = Request::start(parts.method, target, body);
        for (name, value) in &parts.headers {
            out.field(name, value);
        }
        out.end(parts.headers.contains_key(header::CONTENT_LENGTH))
    }
}

async fn write_body<W>(writer: &mut W, mut body: Body, chunked: bool) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
{
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Error::Body)?.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            writer
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            writer.write_all(&data).await?;
            writer.write_all(b"\r\n").await?;
        } else {
            writer.write_all(&data).await?;
        }
    }
    if chunked {
        writer.write_all(b"0\r\n\r\n").await?;
    }
    writer.flush().await?;
    Ok(())
}

/// Reads up to a complete response head (skipping interim 1xx answers other than 101) and
/// leaves what follows it in `read`.
async fn read_head<R>(reader: &mut R, read: &mut BytesMut, method: &Method) -> Result<Head, Error>
where
    R: AsyncRead + Unpin,
{
    let mut got_any = !read.is_empty();
    loop {
        if !read.is_empty() {
            if let Some(head) = parse_head(read, method)? {
                return Ok(head);
            }
            if read.len() >= MAX_HEAD {
                return Err(Error::Invalid("response head too large"));
            }
        }
        read.reserve(READ_SIZE);
        let n = std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, read)
        })
        .await;
        match n {
            Ok(0) if !got_any => return Err(Error::Closed),
            Ok(0) => return Err(Error::Invalid("head cut short")),
            Err(e) if !got_any && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(Error::Closed);
            }
            Err(e) => return Err(e.into()),
            Ok(_) => got_any = true,
        }
    }
}

/// The response head at the start of `read`, taken off it; `None` while it is incomplete.
fn parse_head(read: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        let mut lines = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            read,
            &mut lines,
        );
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many headers")),
            Err(_) => return Err(Error::Invalid("malformed head")),
        };
        let code = response.code.unwrap_or_default();
        if (100..200).contains(&code) && code != 101 {
            read.advance(length); // interim: 100 Continue, 103 Early Hints
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status"))?;
        // A switched protocol's fields are all the client's to see.
        let switched = status == StatusCode::SWITCHING_PROTOCOLS;
        let bodiless = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let base = read.as_ptr() as usize;
        let place = |bytes: &[u8]| {
            let start = (bytes.as_ptr() as usize - base) as u32;
            start..start + bytes.len() as u32
        };
        let fields = &*response.headers;
        let mut at = Vec::with_capacity(fields.len());
        let mut connection = ConnectionFields::default();
        // Whether `Transfer-Encoding`'s last coding is chunked; the declared `Content-Length`.
        let (mut chunked, mut declared) = (None, Ok(None));
        for field in fields {
            let kind = Kind::of(field.name.as_bytes());
            match kind {
                Kind::ContentLength => {
                    declared = declared.and_then(|d| content_length(d, field.value));
                }
                Kind::TransferEncoding => {
                    let last = tokens(field.value).next_back().unwrap_or_default();
                    chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
                Kind::Connection => connection.read(field.value),
                Kind::HopByHop | Kind::Other => {}
            }
            if switched || kind == Kind::Other || (kind == Kind::ContentLength && bodiless) {
                at.push((place(field.name.as_bytes()), place(field.value)));
            }
        }
        if !switched && !connection.named.is_empty() {
            let named = |name: &Range<u32>| {
                let name = &read[name.start as usize..name.end as usize];
                connection
                    .named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name))
            };
            at.retain(|(name, _)| !named(name));
        }
        let framing = match (chunked, declared) {
            _ if switched => Framing::Upgrade,
            _ if bodiless => Framing::Empty,
            (Some(true), _) => Framing::Chunked(Chunk::Size),
            (Some(false), _) | (None, Ok(None)) => Framing::Close,
            (None, Ok(Some(n))) => Framing::Length(n),
            (None, Err(e)) => return Err(e),
        };
        let keep_alive = framing != Framing::Close
            && match response.version {
                Some(0) => connection.keep_alive,
                _ => !connection.close,
            };
        let head = read.split_to(length).freeze();
        return Ok(Some(Head {
            status,
            lines: Lines { head, at },
            framing,
            keep_alive,
        }));
    }
}

/// What a response's header field is to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    /// Another of the connection's own (RFC 9110 §7.6.1).
    HopByHop,
    /// The message's.
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        // By length first: most names are none of these, and are told so without a look.
        match name.len() {
            14 if is("content-length") => Kind::ContentLength,
            17 if is("transfer-encoding") => Kind::TransferEncoding,
            10 if is("connection") => Kind::Connection,
            10 if is("keep-alive") => Kind::HopByHop,
            16 if is("proxy-connection") => Kind::HopByHop,
            7 if is("trailer") || is("upgrade") => Kind::HopByHop,
            2 if is("te") => Kind::HopByHop,
            _ => Kind::Other,
        }
    }
}

/// What a response's `Connection` fields said.
#[derive(Debug, Default)]
struct ConnectionFields<'a> {
    close: bool,
    keep_alive: bool,
    /// The other fields it names as the connection's own.
    named: Vec<&'a [u8]>,
}

impl<'a> ConnectionFields<'a> {
    fn read(&mut self, value: &'a [u8]) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.named.push(token);
            }
        }
    }
}

/// `declared` with a `Content-Length` value added, strictly (RFC 9112 §6.3): digits only, and a
/// list or repeated field only of one number; folded over a message's values, its length.
pub(crate) fn content_length(declared: Option<u64>, value: &[u8]) -> Result<Option<u64>, Error> {
    let mut declared = declared;
    for part in value.split(|&b| b == b',') {
        let n = digits(part.trim_ascii()).ok_or(Error::Invalid("bad content-length"))?;
        if declared.is_some_and(|l| l != n) {
            return Err(Error::Invalid("conflicting content-length"));
        }
        declared = Some(n);
    }
    Ok(declared)
}

/// The header lines httparse found in a read buffer, by name and where each value lies in it.
pub(crate) struct RequestFields(Vec<(HeaderName, Range<usize>)>);

impl RequestFields {
    /// `lines` as parsed from `read`; none when a name is not a valid header name.
    pub(crate) fn of(lines: &[httparse::Header<'_>], read: &[u8]) -> Option<RequestFields> {
        let base = read.as_ptr() as usize;
        let mut fields = Vec::with_capacity(lines.len());
        for line in lines {
            let name = header_name(line.name.as_bytes())?;
            let start = line.value.as_ptr() as usize - base;
            fields.push((name, start..start + line.value.len()));
        }
        Some(RequestFields(fields))
    }

    pub(crate) fn has_any(&self, names: &[HeaderName]) -> bool {
        self.0.iter().any(|(n, _)| names.contains(n))
    }

    /// Splits the head (its first `length` bytes) off `read`, with the header map whose values
    /// share those bytes rather than each being copied (none when a value is invalid).
    pub(crate) fn split_off(
        self,
        read: &mut BytesMut,
        length: usize,
    ) -> (Bytes, Option<HeaderMap>) {
        let head = read.split_to(length).freeze();
        // With room for what plugins add, so that does not grow it.
        let mut headers = HeaderMap::with_capacity(self.0.len() + 6);
        for (name, value) in self.0 {
            match HeaderValue::from_maybe_shared(head.slice(value)) {
                Ok(value) => headers.append(name, value),
                Err(_) => return (head, None),
            };
        }
        (head, Some(headers))
    }
}

/// A decimal number of digits only (no sign, no spaces).
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

thread_local! {
    /// The header names clients sent before, as they spelled them: a worker sees the same few
    /// again and again, and making one (lower-cased, a custom one copied) costs more than
    /// finding it.
    static NAMES: RefCell<crate::FastMap<Box<[u8]>, HeaderName>> = RefCell::default();
}

/// The most names [`NAMES`] keeps; others are made each time.
const NAMES_KEPT: usize = 512;

/// `bytes` as a header name; none when they are not one.
fn header_name(bytes: &[u8]) -> Option<HeaderName> {
    NAMES.with_borrow_mut(|names| {
        if let Some(name) = names.get(bytes) {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(bytes).ok()?;
        if names.len() < NAMES_KEPT {
            names.insert(bytes.into(), name.clone());
        }
        Some(name)
    })
}

/// The elements of a comma-separated header value (`Connection`'s, `Transfer-Encoding`'s),
/// trimmed, empty ones left out.
pub(crate) fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Whether a comma-separated header value (`Connection`'s) names `token`.
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connection whose first bytes (`read`) have been read already: they are read again first.
pub struct Rewind<I> {
    pub read: Bytes,
    pub io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: Method) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(text), &method)
    }

    #[test]
    fn bodies_are_framed_as_rfc_9112_says() {
        let framing = |text: &str, method| head(text, method).unwrap().unwrap().framing;
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n"), Method::GET),
            Framing::Length(5)
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n"), Method::HEAD),
            Framing::Empty
        );
        assert_eq!(
            framing(
                &format!("{ok}transfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n"),
                Method::GET
            ),
            Framing::Chunked(Chunk::Size)
        );
        assert_eq!(
            framing(&format!("{ok}transfer-encoding: gzip\r\n\r\n"), Method::GET),
            Framing::Close
        );
        assert_eq!(framing(&format!("{ok}\r\n"), Method::GET), Framing::Close);
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                Method::GET
            ),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET),
            Framing::Upgrade
        );
        assert!(matches!(
            head(
                &format!("{ok}content-length: 5\r\ncontent-length: 6\r\n\r\n"),
                Method::GET
            ),
            Err(Error::Invalid(_))
        ));
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_connections_own_fields_stay_out_of_the_response() {
        let text = "HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: 1\r\n\
            Keep-Alive: timeout=5\r\nX-Kept: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let answer = head(text, Method::GET).unwrap().unwrap();
        assert_eq!(answer.framing, Framing::Chunked(Chunk::Size));
        assert!(!answer.keep_alive);
        let lines: Vec<_> = answer.lines.iter().collect();
        assert_eq!(lines, [(&b"X-Kept"[..], &b"1"[..])]);
        let text =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let answer = head(text, Method::GET).unwrap().unwrap();
        assert_eq!(
            answer.lines.iter().count(),
            2,
            "a tunnel's answer is the client's"
        );
        // A sized body's length is the client connection's to write; a bodiless answer's
        // declared length stays.
        let sized = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n";
        let answer = head(sized, Method::GET).unwrap().unwrap();
        assert_eq!(answer.lines.iter().count(), 1);
        let answer = head(sized, Method::HEAD).unwrap().unwrap();
        assert_eq!(answer.lines.iter().count(), 2);
    }

    #[test]
    fn lines_become_a_map_with_the_gateways_fields_over_them() {
        let text = "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-RateLimit-Limit: 9\r\n\
            Set-Cookie: b=2\r\nContent-Length: 0\r\n\r\n";
        let lines = head(text, Method::GET).unwrap().unwrap().lines;
        let mut map = HeaderMap::new();
        map.insert("x-ratelimit-limit", HeaderValue::from_static("5"));
        lines.merge_into(&mut map);
        assert_eq!(map.get_all("set-cookie").iter().count(), 2);
        assert_eq!(map["x-ratelimit-limit"], "5");
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn header_names_found_again_are_the_names_made() {
        for name in ["Host", "host", "X-Custom", "x-custom", "APIKEY"] {
            for _ in 0..2 {
                let made = HeaderName::from_bytes(name.as_bytes()).ok();
                assert_eq!(header_name(name.as_bytes()), made);
            }
        }
        assert_eq!(header_name(b"bad name"), None);
    }

    #[test]
    fn chunked_bodies_decode_however_the_reads_split_them() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 0..wire.len() {
            let (mut read, mut chunk) = (BytesMut::new(), Chunk::Size);
            let (mut body, mut ended) = (Vec::new(), false);
            for part in [&wire[..split], &wire[split..]] {
                read.extend_from_slice(part);
                while !ended && let Some(data) = decode_chunk(&mut read, &mut chunk).unwrap() {
                    ended = data.is_empty();
                    body.extend_from_slice(&data);
                }
            }
            assert!(ended, "split at {split}");
            assert_eq!(body, b"hello world");
            assert!(read.is_empty());
        }
        let bad = decode_chunk(&mut BytesMut::from("zz\r\n"), &mut Chunk::Size);
        assert!(bad.is_err());
        let overrun = decode_chunk(&mut BytesMut::from("xx"), &mut Chunk::DataEnd);
        assert!(overrun.is_err());
    }

    #[test]
    fn request_heads_are_written_whole_and_keep_out_injected_lines() {
        let mut get = Request::start(Method::GET, "/a?b=1", crate::client::empty());
        get.header("x-ok", b"1");
        get.header("x-evil", b"1\r\nx-injected: 2");
        assert_eq!(
            get.end(false).head,
            b"GET /a?b=1 HTTP/1.1\r\nx-ok: 1\r\n\r\n"
        );
        let post = Request::start(Method::POST, "/", crate::client::empty()).end(false);
        assert!(post.head.ends_with(b"\r\ncontent-length: 0\r\n\r\n"));
        let declared = Request::start(Method::POST, "/", crate::client::empty()).end(true);
        assert_eq!(declared.head, b"POST / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn interim_answers_are_skipped_and_keep_alive_follows_the_version() {
        let h = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.keep_alive);
        let closing = "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n";
        assert!(!head(closing, Method::GET).unwrap().unwrap().keep_alive);
        let old = "HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(!head(old, Method::GET).unwrap().unwrap().keep_alive);
        let old_kept = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n";
        assert!(head(old_kept, Method::GET).unwrap().unwrap().keep_alive);
    }
}
