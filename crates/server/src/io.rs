//! The listener: accepted connections carry a write deadline.
//!
//! A client that stops reading (a stalled SSE or WebSocket subscriber, a slow-loris download)
//! would otherwise hold its connection, its realtime slot and the buffered events for ever: hyper
//! has no write timeout. When a write has made no progress for the deadline, the connection fails
//! with `TimedOut` and is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// The peer of a connection accepted by [`DeadlineListener`] (its `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, DeadlineListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, DeadlineListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A TCP listener whose connections fail a write stalled for `deadline`.
pub(crate) struct DeadlineListener {
    inner: TcpListener,
    deadline: Duration,
}

impl DeadlineListener {
    pub(crate) fn new(inner: TcpListener, deadline: Duration) -> DeadlineListener {
        DeadlineListener { inner, deadline }
    }
}

impl Listener for DeadlineListener {
    type Io = WriteDeadline;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (WriteDeadline, SocketAddr) {
        let (io, addr) = Listener::accept(&mut self.inner).await;
        (
            WriteDeadline {
                io,
                deadline: self.deadline,
                stalled: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection whose writes fail once one has been pending for `deadline`.
pub(crate) struct WriteDeadline {
    io: TcpStream,
    deadline: Duration,
    /// Since when the pending write has been waiting (allocated only while stalled).
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    /// `Ready` results pass through and clear the stall; a `Pending` one arms the deadline.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let deadline = self.deadline;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for the write deadline",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.guard(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
