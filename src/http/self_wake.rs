//! Polls a connection again at once when it woke itself during its own poll,
//! instead of letting tokio treat it as a task that yielded.
//!
//! Why: hyper hands a request body to the handler over a channel inside the
//! connection's own task. The handler's first read of the body wakes that task
//! (it now wants data), and the dispatcher's delivery of the body wakes it
//! again. Tokio takes a task woken during its own poll for one that yielded:
//! it queues the task behind other work and unparks an idle worker to come
//! and steal it. On every request with a body that cost a futex or eventfd
//! write, a context switch and often a move of the connection to the other
//! core; measured in BENCHMARKS.md ("Self-wakes").
//!
//! Wakes from anywhere else (the socket, a timer, another thread after the
//! poll) reach the task's own waker as before. A task whose tokio budget is
//! spent, or that woke itself `MAX_POLLS` times in a row, yields as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Polls of the inner future per poll from tokio, so that a connection that
/// keeps waking itself still lets other tasks run, as a yield would.
const MAX_POLLS: usize = 4;

/// `WakeState` bits: the inner future is being polled; it was woken since.
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

pub struct RepollOnSelfWake<F> {
    inner: Pin<Box<F>>,
    state: Arc<WakeState>,
    /// A waker for `state`, built once: hyper and tokio keep clones of it,
    /// and `Waker::will_wake` lets them skip re-storing it on every poll.
    waker: Waker,
}

struct WakeState {
    bits: AtomicU8,
    task: AtomicWaker,
}

impl<F: Future> RepollOnSelfWake<F> {
    pub fn new(inner: F) -> Self {
        let state = Arc::new(WakeState {
            bits: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(state.clone());
        RepollOnSelfWake {
            inner: Box::pin(inner),
            state,
            waker,
        }
    }
}

impl<F: Future> Future for RepollOnSelfWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.state.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..MAX_POLLS {
            this.state.bits.store(POLLING, Ordering::SeqCst);
            let polled = this.inner.as_mut().poll(&mut inner_cx);
            // Clearing POLLING and reading WOKEN in one step: a wake after
            // this point goes to the task's waker, one before it is seen here.
            let bits = this.state.bits.swap(0, Ordering::SeqCst);
            if polled.is_ready() || bits & WOKEN == 0 {
                return polled;
            }
            // Tokio's own resources wake a task whose budget is spent so
            // that it yields: let it.
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for WakeState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.bits.fetch_or(WOKEN, Ordering::SeqCst) & POLLING == 0 {
            self.task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts wakes of the task's own waker.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself `times` times, once per poll, then finishes; keeps the
    /// last waker it was given.
    struct WakesItself {
        times: usize,
        polls: usize,
        last_waker: Option<Waker>,
    }

    impl Future for WakesItself {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            self.last_waker = Some(cx.waker().clone());
            if self.polls > self.times {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn wakes_itself(times: usize) -> RepollOnSelfWake<WakesItself> {
        RepollOnSelfWake::new(WakesItself {
            times,
            polls: 0,
            last_waker: None,
        })
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_without_waking_the_task() {
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(task.clone());
        let mut future = wakes_itself(2);
        let polled = Pin::new(&mut future).poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(3));
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_scheduler() {
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(task.clone());
        let mut future = wakes_itself(MAX_POLLS + 1);
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut future).poll(&mut cx), Poll::Pending);
        assert_eq!(future.inner.polls, MAX_POLLS);
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the task must be woken to run again"
        );
        assert_eq!(
            Pin::new(&mut future).poll(&mut cx),
            Poll::Ready(MAX_POLLS + 2)
        );
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task() {
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(task.clone());
        let mut future = RepollOnSelfWake::new(std::future::pending::<()>());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut future).poll(&mut cx), Poll::Pending);
        let inner_waker = future.waker.clone();
        std::thread::spawn(move || inner_waker.wake())
            .join()
            .unwrap();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }
}
