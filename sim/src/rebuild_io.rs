//! The rebuild's outside world in the simulation: the simulated clock, an
//! in-memory link to the source replica, and tasks on the simulator's
//! executor ([`cstor_replica::rebuild::io::RebuildIo`]).
//!
//! A rebuild link ([`SimLink`]) carries whole packets both ways, in order;
//! the scheduler breaks it ([`LinkHandle::break_link`]) when either end
//! crashes or is cut off, and both ends then see the link fail, as a reset
//! TCP connection would. Dials and spawns are queued for the scheduler,
//! which decides whether the source is reachable.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cstor_proto::Packet;
use cstor_replica::rebuild::io::{Clock as RebuildClock, LinkError, RebuildIo};
use cstor_replica::rebuild::RebuildError;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::{Sink, Stream};
use parking_lot::Mutex;

use crate::exec::{Clock, NodeId};

#[derive(Default)]
struct Shared {
    /// Packets towards each end (0: the dialler, 1: the acceptor).
    queues: [VecDeque<Packet>; 2],
    wakers: [Option<Waker>; 2],
    closed: [bool; 2],
    broken: bool,
}

/// One end of an in-memory rebuild link.
pub struct SimLink {
    shared: Arc<Mutex<Shared>>,
    end: usize,
}

/// The scheduler's hold on a link: it can break it.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Mutex<Shared>>,
}

impl LinkHandle {
    pub fn break_link(&self) {
        let wakers = {
            let mut s = self.shared.lock();
            s.broken = true;
            [s.wakers[0].take(), s.wakers[1].take()]
        };
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    pub fn is_done(&self) -> bool {
        let s = self.shared.lock();
        s.broken || (s.closed[0] && s.closed[1])
    }
}

/// A new link: (dialler's end, acceptor's end, handle).
pub fn link_pair() -> (SimLink, SimLink, LinkHandle) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    (
        SimLink {
            shared: Arc::clone(&shared),
            end: 0,
        },
        SimLink {
            shared: Arc::clone(&shared),
            end: 1,
        },
        LinkHandle { shared },
    )
}

impl Drop for SimLink {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.shared.lock();
            s.closed[self.end] = true;
            s.wakers[1 - self.end].take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Stream for SimLink {
    type Item = Result<Packet, LinkError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut s = self.shared.lock();
        if s.broken {
            return Poll::Ready(Some(Err(LinkError("connection reset (simulated)".into()))));
        }
        if let Some(p) = s.queues[self.end].pop_front() {
            return Poll::Ready(Some(Ok(p)));
        }
        if s.closed[1 - self.end] {
            return Poll::Ready(None);
        }
        s.wakers[self.end] = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Sink<Packet> for SimLink {
    type Error = LinkError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        if self.shared.lock().broken {
            return Poll::Ready(Err(LinkError("connection reset (simulated)".into())));
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Packet) -> Result<(), LinkError> {
        let waker = {
            let mut s = self.shared.lock();
            if s.broken || s.closed[1 - self.end] {
                return Err(LinkError("connection reset (simulated)".into()));
            }
            s.queues[1 - self.end].push_back(item);
            s.wakers[1 - self.end].take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Poll::Ready(Ok(()))
    }
}

/// A dial the scheduler must answer.
pub struct Dial {
    pub from: NodeId,
    pub peer_address: String,
    pub answer: oneshot::Sender<Result<SimLink, String>>,
}

/// What rebuild code asked of the scheduler.
#[derive(Default)]
pub struct Requests {
    pub spawns: Vec<(NodeId, BoxFuture<'static, ()>)>,
    pub dials: Vec<Dial>,
}

/// A replica's rebuild world: its node, address, the clock.
#[derive(Clone)]
pub struct SimRebuildIo {
    pub node: NodeId,
    pub own_address: String,
    pub clock: Clock,
    pub requests: Arc<Mutex<Requests>>,
}

impl RebuildClock for SimRebuildIo {
    fn now(&self) -> Duration {
        Duration::from_micros(self.clock.now_us())
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(self.clock.sleep(d))
    }
}

impl RebuildIo for SimRebuildIo {
    type Conn = SimLink;

    fn dial(
        &self,
        peer_address: &str,
    ) -> BoxFuture<'static, Result<(SimLink, String), RebuildError>> {
        let (tx, rx) = oneshot::channel();
        self.requests.lock().dials.push(Dial {
            from: self.node,
            peer_address: peer_address.to_owned(),
            answer: tx,
        });
        let own = self.own_address.clone();
        let peer = peer_address.to_owned();
        Box::pin(async move {
            match rx.await {
                Ok(Ok(link)) => Ok((link, own)),
                Ok(Err(detail)) => Err(RebuildError::Peer { peer, detail }),
                Err(_) => Err(RebuildError::Peer {
                    peer,
                    detail: "dial dropped (the simulated source is gone)".into(),
                }),
            }
        })
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.requests.lock().spawns.push((self.node, task));
    }
}
