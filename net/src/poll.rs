//! One epoll helper for every event loop in vmm (the main loop, the device workers, the
//! masquerade engine): typed tokens, `EINTR` retried in one place, and a worker loop that
//! ends when its kill event fires. Cloud Hypervisor's `EpollHelper` is the model.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// What an epoll registration stands for: a loop's own enum, encoded in the 64-bit datum.
pub trait Token: Copy {
    /// The datum that stands for this token.
    fn encode(self) -> u64;
    /// The token a datum stands for; `None` for one this loop never registered.
    fn decode(data: u64) -> Option<Self>;
}

/// The most events one wait returns.
const MAX_EVENTS: usize = 64;

/// The datum of the kill event, outside every loop's own tokens.
const KILL: u64 = u64::MAX;

/// The events one wait returned.
#[derive(Debug, Clone, Copy)]
pub struct Fired<T> {
    events: [EpollEvent; MAX_EVENTS],
    len: usize,
    _token: PhantomData<T>,
}

impl<T: Token> Fired<T> {
    /// How many events fired (tokens not decoded included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none did: the wait timed out.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the wait filled the buffer, so that more may be pending.
    pub fn is_full(&self) -> bool {
        self.len == MAX_EVENTS
    }

    /// Each event's token and readiness; data no token decodes to (the kill event) skipped.
    pub fn iter(&self) -> impl Iterator<Item = (T, EventSet)> + '_ {
        self.events[..self.len]
            .iter()
            .filter_map(|e| Some((T::decode(e.data())?, e.event_set())))
    }

    fn killed(&self) -> bool {
        self.events[..self.len].iter().any(|e| e.data() == KILL)
    }
}

/// An epoll instance whose registrations are tokens of type `T`.
#[derive(Debug)]
pub struct Poller<T> {
    epoll: Epoll,
    _token: PhantomData<T>,
}

impl<T: Token> Poller<T> {
    /// A new, empty epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            _token: PhantomData,
        })
    }

    fn ctl(&self, op: ControlOperation, fd: RawFd, events: EventSet, data: u64) -> io::Result<()> {
        self.epoll.ctl(op, fd, EpollEvent::new(events, data))
    }

    /// Watches `fd` for `events`, as `token`.
    pub fn add(&self, fd: RawFd, token: T, events: EventSet) -> io::Result<()> {
        self.ctl(ControlOperation::Add, fd, events, token.encode())
    }

    /// Watches `fd` for readability, as `token`.
    pub fn add_readable(&self, fd: RawFd, token: T) -> io::Result<()> {
        self.add(fd, token, EventSet::IN)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: T, events: EventSet) -> io::Result<()> {
        self.ctl(ControlOperation::Modify, fd, events, token.encode())
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(ControlOperation::Delete, fd, EventSet::empty(), 0)
    }

    /// Makes [`Poller::run`] return when `kill` becomes readable.
    pub fn add_kill(&self, kill: &EventFd) -> io::Result<()> {
        self.ctl(ControlOperation::Add, kill.as_raw_fd(), EventSet::IN, KILL)
    }

    /// Waits up to `timeout` (`None`: until an event) for events; a signal's interruption
    /// is waited through. A zero timeout only collects what is pending.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Fired<T>> {
        let ms = timeout.map_or(-1, |t| {
            // Rounded up, so that a deadline is not woken for just before it passes.
            let ms = t.as_micros().div_ceil(1000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        });
        let mut fired = Fired {
            events: [EpollEvent::default(); MAX_EVENTS],
            len: 0,
            _token: PhantomData,
        };
        loop {
            match self.epoll.wait(ms, &mut fired.events) {
                Ok(n) => {
                    fired.len = n;
                    return Ok(fired);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A worker's loop: waits for events and hands each to `handle` until the kill event
    /// (see [`Poller::add_kill`]) fires or `handle` fails. Events that fired together with
    /// the kill event are not handled.
    pub fn run<E: From<io::Error>>(
        &self,
        mut handle: impl FnMut(&Self, T, EventSet) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            let fired = self.wait(None)?;
            if fired.killed() {
                return Ok(());
            }
            for (token, events) in fired.iter() {
                handle(self, token, events)?;
            }
        }
    }
}

impl<T> AsRawFd for Poller<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum T {
        A,
        B(u32),
    }

    impl Token for T {
        fn encode(self) -> u64 {
            match self {
                T::A => 0,
                T::B(n) => 1 << 32 | u64::from(n),
            }
        }
        fn decode(data: u64) -> Option<Self> {
            match data >> 32 {
                0 => Some(T::A),
                1 => Some(T::B(u32::try_from(data & 0xffff_ffff).ok()?)),
                _ => None,
            }
        }
    }

    #[test]
    fn tokens_come_back_typed_and_a_zero_timeout_only_collects() {
        let poller = Poller::<T>::new().unwrap();
        let (a, b) = (
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(0).unwrap(),
        );
        poller.add_readable(a.as_raw_fd(), T::A).unwrap();
        poller.add_readable(b.as_raw_fd(), T::B(7)).unwrap();
        assert!(poller.wait(Some(Duration::ZERO)).unwrap().is_empty());
        b.write(1).unwrap();
        let fired = poller.wait(Some(Duration::ZERO)).unwrap();
        let got: Vec<T> = fired.iter().map(|(t, _)| t).collect();
        assert_eq!(got, vec![T::B(7)]);
        poller.delete(b.as_raw_fd()).unwrap();
        assert!(poller.wait(Some(Duration::ZERO)).unwrap().is_empty());
    }

    #[test]
    fn a_worker_loop_ends_at_its_kill_event_and_on_the_first_error() {
        let poller = Poller::<T>::new().unwrap();
        let work = EventFd::new(EFD_NONBLOCK).unwrap();
        let kill = EventFd::new(EFD_NONBLOCK).unwrap();
        poller.add_readable(work.as_raw_fd(), T::A).unwrap();
        poller.add_kill(&kill).unwrap();
        work.write(1).unwrap();
        let mut seen = 0;
        let r: io::Result<()> = poller.run(|_, token, _| {
            assert_eq!(token, T::A);
            let _ = work.read();
            seen += 1;
            kill.write(1)
        });
        r.unwrap();
        assert_eq!(seen, 1);

        let failing = Poller::<T>::new().unwrap();
        let work = EventFd::new(EFD_NONBLOCK).unwrap();
        failing.add_readable(work.as_raw_fd(), T::A).unwrap();
        work.write(1).unwrap();
        let r: io::Result<()> = failing.run(|_, _, _| Err(io::Error::other("broken")));
        assert_eq!(r.unwrap_err().to_string(), "broken");
    }
}
