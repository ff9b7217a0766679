//! WebRTC-direct connections from browsers: hold our streams until the
//! browser can take them.
//!
//! A browser dialling `webrtc-direct` is the Noise *responder*, so the oracle
//! finishes the handshake first and its behaviours open their streams (gossipsub,
//! identify) at once, while the browser is still closing the handshake channel.
//! libp2p-webrtc-websys only installs its `ondatachannel` handler after that
//! close, and the browser drops data channels that arrive before it: the tab
//! connected and handshook, but never received a gossip message.
//!
//! [`BrowserGate`] wraps an inbound WebRTC connection and keeps our outbound
//! streams pending until the dialler opens its first stream (it does so only
//! once its handler is installed), or until [`OUTBOUND_GRACE`] has passed for a
//! dialler that never opens one. Connections we dial are not gated.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

/// How long outbound streams wait for a dialler that opens no stream of its own.
pub(super) const OUTBOUND_GRACE: Duration = Duration::from_secs(2);

/// A WebRTC connection whose outbound streams wait for the remote's first
/// inbound stream (see the module docs).
pub(super) struct BrowserGate<M> {
    inner: M,
    /// `None` once outbound streams may open.
    gate: Option<Gate>,
}

struct Gate {
    grace: Pin<Box<tokio::time::Sleep>>,
    waiting: Option<Waker>,
}

impl<M> BrowserGate<M> {
    /// Gates `inner`'s outbound streams (an inbound connection from a browser)
    /// for at most `grace`.
    pub(super) fn gated(inner: M, grace: Duration) -> Self {
        Self {
            inner,
            gate: Some(Gate {
                grace: Box::pin(tokio::time::sleep(grace)),
                waiting: None,
            }),
        }
    }

    /// Passes `inner` through unchanged (a connection we dialled).
    pub(super) fn open(inner: M) -> Self {
        Self { inner, gate: None }
    }

    fn lift(&mut self) {
        if let Some(gate) = self.gate.take()
            && let Some(waker) = gate.waiting
        {
            waker.wake();
        }
    }
}

impl<M: StreamMuxer + Unpin> StreamMuxer for BrowserGate<M> {
    type Substream = M::Substream;
    type Error = M::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_inbound(cx);
        if polled.is_ready() {
            this.lift();
        }
        polled
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(gate) = &mut this.gate {
            if gate.grace.as_mut().poll(cx).is_pending() {
                gate.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            tracing::debug!("webrtc: the dialler opened no stream in time; opening ours");
            this.gate = None;
        }
        Pin::new(&mut this.inner).poll_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;

    use futures::io::Cursor;
    use futures::task::noop_waker_ref;

    use super::*;

    /// A connection whose remote has opened the streams in `inbound`.
    #[derive(Default)]
    struct Streams {
        inbound: VecDeque<Cursor<Vec<u8>>>,
        outbound_opened: usize,
    }

    impl StreamMuxer for Streams {
        type Substream = Cursor<Vec<u8>>;
        type Error = io::Error;

        fn poll_inbound(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<io::Result<Self::Substream>> {
            self.inbound
                .pop_front()
                .map_or(Poll::Pending, |s| Poll::Ready(Ok(s)))
        }

        fn poll_outbound(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<io::Result<Self::Substream>> {
            self.outbound_opened += 1;
            Poll::Ready(Ok(Cursor::new(Vec::new())))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<StreamMuxerEvent>> {
            Poll::Pending
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(noop_waker_ref())
    }

    #[tokio::test]
    async fn outbound_streams_wait_for_the_browsers_first_stream() {
        let mut conn = BrowserGate::gated(Streams::default(), OUTBOUND_GRACE);
        assert!(Pin::new(&mut conn).poll_outbound(&mut cx()).is_pending());
        assert!(Pin::new(&mut conn).poll_inbound(&mut cx()).is_pending());
        assert!(Pin::new(&mut conn).poll_outbound(&mut cx()).is_pending());
        assert_eq!(conn.inner.outbound_opened, 0);

        conn.inner.inbound.push_back(Cursor::new(Vec::new()));
        assert!(Pin::new(&mut conn).poll_inbound(&mut cx()).is_ready());
        assert!(Pin::new(&mut conn).poll_outbound(&mut cx()).is_ready());
        assert_eq!(conn.inner.outbound_opened, 1);
    }

    #[tokio::test]
    async fn a_silent_dialler_gets_our_streams_after_the_grace_period() {
        let grace = Duration::from_millis(50);
        let mut conn = BrowserGate::gated(Streams::default(), grace);
        assert!(Pin::new(&mut conn).poll_outbound(&mut cx()).is_pending());
        tokio::time::sleep(grace).await;
        assert!(Pin::new(&mut conn).poll_outbound(&mut cx()).is_ready());
        assert_eq!(conn.inner.outbound_opened, 1);
    }

    #[test]
    fn connections_we_dial_are_not_gated() {
        let mut conn = BrowserGate::open(Streams::default());
        assert!(Pin::new(&mut conn).poll_outbound(&mut cx()).is_ready());
    }
}
