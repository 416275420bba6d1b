//! A small persistent pool of threads for splitting one frame's layers: no thread is started
//! per frame or per layer, and a layer's parts reach the workers in well under a microsecond
//! while a frame runs, because the workers spin briefly between layers before they sleep.
//!
//! [`Pool::run`]`(n, f)` calls `f(0) … f(n − 1)`, each exactly once, on the calling thread and
//! the pool's workers, and returns when every call has returned. `f` may borrow the caller's
//! stack: the pool keeps no reference to it after `run` returns (the protocol below).
//!
//! Protocol (every atomic access `SeqCst`, so the steps below are in one total order):
//! - The caller publishes a pointer to a [`Job`] on its stack in `job`, then bumps `seq` and
//!   wakes sleeping workers.
//! - A worker that sees a new `seq` first increments `holders`, then loads `job`: a null
//!   pointer means the job is gone (it decrements `holders` and waits again); otherwise it
//!   claims task indices from the job's counter and runs them, then decrements `holders`.
//! - The caller claims tasks too; when all `n` are done it stores null in `job`, then waits
//!   until `holders` is 0 before returning. A worker that loaded the non-null pointer did so
//!   after its increment and before the caller's null store, so the caller's wait sees that
//!   increment and lasts until the worker has stopped touching the job.
//!
//! A panic in `f` is caught where it happens, counted as done, and the first one's payload is
//! resumed on the caller after the job ends (later ones are forgotten, not dropped, so a
//! payload whose drop panics cannot unwind a worker or the caller out of the protocol). One job
//! at a time per pool: a `run` that finds the pool busy (another thread's frame, or a task of
//! the running job calling back) runs its tasks on its own thread instead of waiting. The
//! caller's waits spin, then yield the core, so a descheduled worker is not raced for a slice.
//!
//! Must not: know about layers (see [`super::par`]).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it sleeps: longer than the gap
/// between two layers of a frame, far shorter than the gap between frames.
const SPIN: Duration = Duration::from_micros(200);

/// One `run` call's work, on the caller's stack.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// The first panic's payload.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl Job<'_> {
    /// Claim and run tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n {
                return;
            }
            let f = self.f;
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
                let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                match first.as_ref() {
                    None => *first = Some(p),
                    Some(_) => std::mem::forget(p),
                }
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Shared {
    /// The current job, or null.
    job: AtomicPtr<Job<'static>>,
    /// Bumped once per job.
    seq: AtomicU64,
    /// Workers between their increment and decrement (see the protocol).
    holders: AtomicUsize,
    /// Workers asleep on `wake`.
    sleepers: AtomicUsize,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// The pool (see the module docs). Dropping it stops and joins its workers.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time.
    running: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

impl Pool {
    /// A pool that runs jobs on the caller and `threads − 1` workers (`threads` ≥ 1).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            seq: AtomicU64::new(0),
            holders: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::new(),
            running: Mutex::new(()),
        };
        for i in 1..threads.max(1) {
            let s = Arc::clone(&pool.shared);
            let h = std::thread::Builder::new()
                .name(format!("teachcam-nn-{i}"))
                .spawn(move || worker(&s))?;
            pool.workers.push(h);
        }
        Ok(pool)
    }

    /// Threads a job runs on (the caller included).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Call `f(i)` for every `i` in `0..n`, each once, on this thread and the workers; return
    /// when all have returned. A panic in any call is resumed here afterwards.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || n == 1 {
            (0..n).for_each(f);
            return;
        }
        let _one = match self.running.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Busy: the same results, on this thread alone, without waiting.
                (0..n).for_each(f);
                return;
            }
        };
        let job = Job {
            f,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        let s = &*self.shared;
        // SAFETY: the pointer's lifetime is erased only for storage in `job`; by the module's
        // protocol no worker dereferences it after this function stores null and sees
        // `holders` at 0, which it does below before `job` goes out of scope.
        let ptr = (&job as *const Job<'_>).cast_mut().cast::<Job<'static>>();
        s.job.store(ptr, SeqCst);
        s.seq.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        job.work();
        wait_until(|| job.done.load(SeqCst) >= n);
        s.job.store(std::ptr::null_mut(), SeqCst);
        wait_until(|| s.holders.load(SeqCst) == 0);
        let first = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = first {
            std::panic::resume_unwind(p);
        }
    }
}

/// Spin until `done()`, yielding the core after a while (a worker may have been descheduled).
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < 4096 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = s.seq.load(SeqCst);
    loop {
        // Spin for a new job a little, then sleep until one comes.
        let start = Instant::now();
        while s.seq.load(SeqCst) == seen && !s.stop.load(SeqCst) {
            if start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.seq.load(SeqCst) == seen && !s.stop.load(SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        if s.stop.load(SeqCst) {
            return;
        }
        seen = s.seq.load(SeqCst);
        s.holders.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst);
        if !p.is_null() {
            // SAFETY: `p` was loaded after this worker's increment of `holders` and was not
            // null, so the job's `run` call has not yet stored null and seen `holders` at 0:
            // it is still waiting, and the job it points to is alive until this worker's
            // decrement below (the module's protocol).
            unsafe { &*p }.work();
        }
        s.holders.fetch_sub(1, SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs_of_every_size() {
        let pool = Pool::new(3).unwrap();
        assert_eq!(pool.threads(), 3);
        for round in 0..2000usize {
            let n = round % 17;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
            // A pause now and then lets the workers fall asleep, so waking is tested too.
            if round % 500 == 0 {
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn jobs_borrow_the_stack_and_several_threads_work() {
        let pool = Pool::new(2).unwrap();
        let data: Vec<u64> = (0..1000).collect();
        let sums: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let who = Mutex::new(std::collections::HashSet::new());
        for _ in 0..200 {
            pool.run(4, &|i| {
                let s: u64 = data[i * 250..(i + 1) * 250].iter().sum();
                sums[i].store(s, SeqCst);
                who.lock().unwrap().insert(std::thread::current().id());
                // Long enough that the other thread takes a part.
                std::thread::sleep(Duration::from_micros(50));
            });
        }
        let total: u64 = sums.iter().map(|s| s.load(SeqCst)).sum();
        assert_eq!(total, data.iter().sum::<u64>());
        assert_eq!(who.lock().unwrap().len(), 2, "the worker took parts");
    }

    #[test]
    fn a_panicking_part_is_resumed_on_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("part 5");
                }
            })
        }));
        let payload = r.unwrap_err();
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"part 5"),
            "the part's own panic"
        );
        let n = AtomicUsize::new(0);
        pool.run(8, &|_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 8);
    }

    #[test]
    fn a_run_inside_a_running_job_does_its_tasks_itself() {
        let pool = Pool::new(2).unwrap();
        let inner = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                inner.fetch_add(1, SeqCst);
            });
        });
        assert_eq!(inner.load(SeqCst), 12);
    }

    #[test]
    fn one_thread_runs_everything_on_the_caller() {
        let pool = Pool::new(1).unwrap();
        let me = std::thread::current().id();
        pool.run(5, &|_| assert_eq!(std::thread::current().id(), me));
    }
}
