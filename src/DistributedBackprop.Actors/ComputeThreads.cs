using System.Collections.Concurrent;
using System.Diagnostics;
using Akka.Actor;
using Akka.Configuration;
using Akka.Dispatch;

namespace DistributedBackprop.Actors;

/// <summary>
/// Local mode's threads: one dedicated thread per worker, each an Akka dispatcher of its own
/// (<see cref="DispatcherId"/>), the parameter server sharing the first, and the server's update run in lanes
/// on all of them (<see cref="ForEachLane"/>).
///
/// Why: in a synchronous step each worker waits while the server reduces and applies, and the server waits
/// while the workers compute. With the server on the thread pool and every worker parked in between, a step paid
/// four wake-ups of an idle thread (worker → server, the update's task and its parallel lanes, server → worker)
/// and moved the gradient to another core and θ back; measured here (a 2-vCPU VM, batch 256, 1 worker) that was
/// 0.8–1.3 ms of a 5–6.5 ms step (docs/architecture.md). Here a thread that ran out of work spins for <see cref="SpinTime"/> before it parks
/// (only if every thread can have a core of its own; more threads than cores park at once), the server's
/// messages from the worker it shares a thread with are handled right after that worker's, on the core
/// that holds its gradient, and the update's lanes are taken by whichever threads are idle, the caller first
/// (or, for an update with one copy of θ per thread, each lane by its own thread: <see cref="ForEachLane"/>).
/// </summary>
public sealed class ComputeThreads : IDisposable
{
    /// <summary>How long an idle thread keeps looking for work before it parks: a step's update and hand-off fit in it.</summary>
    public static readonly TimeSpan SpinTime = TimeSpan.FromMilliseconds(2);

    private readonly ComputeThread[] _threads;
    private readonly long _spinTicks;
    private readonly LaneBoard _board = new();
    /// <summary>The thread of each live worker (<see cref="PlaceWorker"/>).</summary>
    private readonly Dictionary<string, int> _placed = [];
    private int _disposed;

    /// <summary>The compute thread running this code, if it is one (of any group).</summary>
    [ThreadStatic]
    private static ComputeThread? t_current;

    public ComputeThreads(int count, string name)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        // Spinning threads that outnumber the cores would take them from the threads that compute.
        _spinTicks = count <= Environment.ProcessorCount ? (long)(SpinTime.TotalSeconds * Stopwatch.Frequency) : 0;
        _threads = new ComputeThread[count];
        for (int i = 0; i < count; i++)
        {
            _threads[i] = new ComputeThread(this, i, $"{name}-{i + 1}");
        }
    }

    public int Count => _threads.Length;

    /// <summary>The dispatcher of thread <paramref name="thread"/> (after <see cref="Install"/>).</summary>
    public static string DispatcherId(int thread) => $"dbp.compute-thread-{thread}";

    /// <summary>
    /// The thread for a new worker named <paramref name="worker"/>: the one with the fewest live workers, the first
    /// of those (so the first N workers get a thread each and the server's thread fills first).
    /// <see cref="WorkerLeft"/> frees its place: a worker added after one died takes the dead one's thread. Called
    /// by one actor (the coordinator).
    /// </summary>
    public int PlaceWorker(string worker)
    {
        Span<int> live = stackalloc int[_threads.Length];
        lock (_placed)
        {
            foreach (int thread in _placed.Values)
            {
                live[thread]++;
            }
            int best = 0;
            for (int i = 1; i < live.Length; i++)
            {
                if (live[i] < live[best])
                {
                    best = i;
                }
            }
            _placed[worker] = best;
            return best;
        }
    }

    /// <summary>The worker named <paramref name="worker"/> has stopped (a name never placed is ignored).</summary>
    public void WorkerLeft(string worker)
    {
        lock (_placed)
        {
            _placed.Remove(worker);
        }
    }

    /// <summary>The thread a live worker was placed on (<see cref="PlaceWorker"/>), or −1 for a name not placed. Any thread may ask.</summary>
    public int ThreadOf(string worker)
    {
        lock (_placed)
        {
            return _placed.TryGetValue(worker, out int thread) ? thread : -1;
        }
    }

    /// <summary>Registers one dispatcher per thread with <paramref name="system"/>.</summary>
    public void Install(ActorSystem system)
    {
        for (int i = 0; i < _threads.Length; i++)
        {
            string id = DispatcherId(i);
            // One message per mailbox run: a worker given two steps' work at once (--outer-overlap deals the next
            // round ahead) lets the server, queued behind it on the same thread, take the first answer in between.
            Config config = ConfigurationFactory.ParseString($"id = \"{id}\", throughput = 1");
            if (!system.Dispatchers.RegisterConfigurator(id, new ThreadConfigurator(config, system.Dispatchers.Prerequisites, _threads[i])))
            {
                throw new InvalidOperationException($"dispatcher {id} is already registered in this actor system");
            }
        }
    }

    /// <summary>
    /// Runs <paramref name="work"/>(lane) for every lane 0 … <paramref name="lanes"/> − 1 and returns when all are
    /// done. Lanes are taken one at a time by the calling thread and by any of these threads that is idle (up to
    /// <paramref name="lanes"/> − 1 parked ones are woken); the caller takes whatever is left, so a busy thread never
    /// holds the update up. One caller at a time (the parameter server).
    /// <paramref name="onOwnThreads"/>: lane i is run by thread i (the caller runs its own, and any lane whose thread
    /// is busy with other work or that has no thread), for work whose lane i writes what thread i reads next: one
    /// copy of θ per thread. Which thread runs a lane changes only where its writes land, never what they are.
    /// </summary>
    public void ForEachLane(int lanes, Action<int> work, bool onOwnThreads = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(lanes, 1);
        if (lanes == 1 && !onOwnThreads)
        {
            work(0);
            return;
        }
        _board.Post(work, lanes, onOwnThreads ? this : null);
        if (onOwnThreads)
        {
            // Each lane's own thread, whoever calls: a parked one left asleep would leave its lane to nobody.
            for (int i = 0; i < Math.Min(lanes, _threads.Length); i++)
            {
                _threads[i].WakeIfParked();
            }
        }
        else
        {
            int woken = 0;
            for (int i = 0; i < _threads.Length && woken < lanes - 1; i++)
            {
                if (_threads[i].WakeIfParked())
                {
                    woken++;
                }
            }
        }
        _board.WaitAndClear(t_current is { } caller && caller.Group == this ? caller.Index : -1);
    }

    /// <summary>Whether thread <paramref name="thread"/> cannot take its own lane now: running something else, stopping, or not one of these.</summary>
    private bool Unavailable(int thread) => thread >= _threads.Length || _threads[thread].Busy;

    /// <summary>Stops the threads; after the actor system that runs on them has terminated, from another thread.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }
        foreach (ComputeThread thread in _threads)
        {
            thread.Stop();
        }
    }

    /// <summary>
    /// Lanes offered to whoever is idle, one call's at a time, in one object reused by every call (nothing allocated a
    /// step). Not pinned: each helper takes a lane by counting <see cref="_left"/> down until none is left. Pinned: each lane is
    /// taken once (<see cref="_taken"/>), by its own thread, or by the caller when that thread is unavailable.
    /// A thread may read the board just before a call closes and act on it after the next one opened, so between calls
    /// nothing can be taken (<see cref="_left"/> at or below zero, every lane marked taken), and a call opens by
    /// writing its work and counts first and making its lanes takeable last: a late helper either finds nothing, or
    /// takes a lane of the open call with that call's work, which is what any helper may do. Whether a lane is the
    /// helper's is decided by its one atomic operation alone (a decrement, a compare-and-swap), never checked against
    /// a count read after it: a helper that took "lane 2" of a closed 2-lane call and read the next call's count of 4
    /// would run lane 2 of that call a second time (found in review).
    /// </summary>
    private sealed class LaneBoard
    {
        private Action<int> _work = static _ => { };
        private int _lanes;
        /// <summary>Pinned calls only: the threads whose lanes they are (null for an unpinned call).</summary>
        private ComputeThreads? _group;
        /// <summary>Unpinned: lanes not yet taken (a decrement to k ≥ 0 takes lane k); at or below zero between calls.</summary>
        private int _left;
        private int _unfinished;
        private Exception? _error;
        /// <summary>Pinned: 0 while lane i may be taken, 1 once taken (and between calls); grown, never shrunk.</summary>
        private int[] _taken = [];

        /// <summary>Whether thread <paramref name="thread"/> has a lane to take.</summary>
        public bool HasLaneFor(int thread)
        {
            int[] taken = Volatile.Read(ref _taken);
            return Volatile.Read(ref _left) > 0
                || ((uint)thread < (uint)taken.Length && Volatile.Read(ref taken[thread]) == 0);
        }

        public void Post(Action<int> work, int lanes, ComputeThreads? pinnedTo)
        {
            // The last call is closed: _left is at most zero and every lane is marked taken.
            if (pinnedTo is not null && _taken.Length < lanes)
            {
                int[] grown = new int[lanes];
                Array.Fill(grown, 1);
                Volatile.Write(ref _taken, grown); // once per larger lane count, not per step
            }
            _work = work;
            _group = pinnedTo;
            _error = null;
            _unfinished = lanes;
            Volatile.Write(ref _lanes, lanes);
            // Open last, with release semantics: whoever takes a lane after this sees the writes above.
            if (pinnedTo is not null)
            {
                for (int lane = 0; lane < lanes; lane++)
                {
                    Volatile.Write(ref _taken[lane], 0);
                }
            }
            else
            {
                Volatile.Write(ref _left, lanes);
            }
            // A full fence: the opening must be visible before the caller reads which threads are parked (a thread
            // about to park re-checks the board after saying so), or a thread could miss both.
            Interlocked.MemoryBarrier();
        }

        /// <summary>Thread <paramref name="thread"/> (−1: not a compute thread) takes what it may.</summary>
        public void Help(int thread)
        {
            if (Volatile.Read(ref _group) is not null)
            {
                if ((uint)thread < (uint)Volatile.Read(ref _lanes))
                {
                    TryRun(thread);
                }
                return;
            }
            int lane;
            while ((lane = Interlocked.Decrement(ref _left)) >= 0)
            {
                Run(lane);
            }
        }

        public void WaitAndClear(int callerThread)
        {
            Help(callerThread);
            var spinner = new SpinWait();
            while (Volatile.Read(ref _unfinished) > 0)
            {
                TakeUnavailableLanes();
                spinner.SpinOnce(sleep1Threshold: -1);
            }
            // Every lane was taken (pinned) or handed out (_left ≤ 0): nothing can be taken until the next Post.
            if (_error is { } error)
            {
                throw new AggregateException(error);
            }
        }

        /// <summary>Pinned: the caller takes the lanes whose threads cannot (busy with other work, or none).</summary>
        private void TakeUnavailableLanes()
        {
            if (_group is null)
            {
                return;
            }
            for (int lane = 0; lane < _lanes; lane++)
            {
                if (Volatile.Read(ref _taken[lane]) == 0 && _group.Unavailable(lane))
                {
                    TryRun(lane);
                }
            }
        }

        private void TryRun(int lane)
        {
            int[] taken = Volatile.Read(ref _taken);
            if ((uint)lane < (uint)taken.Length && Interlocked.CompareExchange(ref taken[lane], 1, 0) == 0)
            {
                Run(lane);
            }
        }

        private void Run(int lane)
        {
            try
            {
                _work(lane);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
            Interlocked.Decrement(ref _unfinished);
        }
    }

    /// <summary>One dedicated thread: runs what its dispatcher gives it, helps with posted lanes, spins, then parks.</summary>
    private sealed class ComputeThread
    {
        private readonly ConcurrentQueue<IRunnable> _queue = new();
        private readonly ManualResetEventSlim _wake = new(false, spinCount: 1);
        private readonly Thread _thread;
        private int _parked;
        private volatile bool _stopping;
        /// <summary>Running an item of its dispatcher (a worker computing, the server's handler).</summary>
        private volatile bool _running;

        public ComputeThread(ComputeThreads group, int index, string name)
        {
            Group = group;
            Index = index;
            _thread = new Thread(Loop) { IsBackground = true, Name = name };
            _thread.Start();
        }

        public ComputeThreads Group { get; }

        public int Index { get; }

        /// <summary>Cannot take a lane posted for it now: running another item, or stopping.</summary>
        public bool Busy => _running || _stopping;

        public void Execute(IRunnable run)
        {
            if (_stopping)
            {
                throw new RejectedExecutionException($"{_thread.Name} has stopped");
            }
            _queue.Enqueue(run);
            // Pairs with the fence in Loop: either this sees the thread parked, or the thread sees the item.
            Interlocked.MemoryBarrier();
            WakeIfParked();
        }

        /// <summary>Wakes the thread if it is parked (or about to park); whether it was.</summary>
        public bool WakeIfParked()
        {
            if (Volatile.Read(ref _parked) == 1)
            {
                _wake.Set();
                return true;
            }
            return false;
        }

        public void Stop()
        {
            if (Thread.CurrentThread == _thread)
            {
                throw new InvalidOperationException($"{_thread.Name} cannot stop itself");
            }
            _stopping = true;
            _wake.Set();
            _thread.Join();
            // The event is not disposed: a late WakeIfParked may still set it, and it holds no handle until a Wait
            // blocks. Work handed to the thread after this (the actor system has terminated by then) is not run.
        }

        private void Loop()
        {
            t_current = this;
            while (!_stopping)
            {
                if (_queue.TryDequeue(out IRunnable? run))
                {
                    _running = true;
                    run.Run();
                    _running = false;
                    continue;
                }
                if (Group._board.HasLaneFor(Index))
                {
                    Group._board.Help(Index);
                    continue;
                }
                if (SpinForWork())
                {
                    continue;
                }
                _wake.Reset();
                Interlocked.Exchange(ref _parked, 1);
                if (_queue.IsEmpty && !Group._board.HasLaneFor(Index) && !_stopping)
                {
                    _wake.Wait();
                }
                Volatile.Write(ref _parked, 0);
            }
        }

        /// <summary>Spins until work or lanes come (true) or the spin time is up (false).</summary>
        private bool SpinForWork()
        {
            long until = Stopwatch.GetTimestamp() + Group._spinTicks;
            // SpinWait yields the core now and then, so the coordinator or the GC, which share these cores, are not
            // held up behind a thread that only waits.
            var spinner = new SpinWait();
            while (Stopwatch.GetTimestamp() < until)
            {
                if (!_queue.IsEmpty || Group._board.HasLaneFor(Index) || _stopping)
                {
                    return true;
                }
                spinner.SpinOnce(sleep1Threshold: -1);
            }
            return false;
        }
    }

    /// <summary>Akka's side: a dispatcher per thread, whose executor is that thread. Its shutdown leaves the thread to <see cref="Dispose"/>.</summary>
    private sealed class ThreadConfigurator : MessageDispatcherConfigurator
    {
        private readonly Dispatcher _dispatcher;

        public ThreadConfigurator(Config config, IDispatcherPrerequisites prerequisites, ComputeThread thread) : base(config, prerequisites) =>
            _dispatcher = new Dispatcher(this, config.GetString("id"), config.GetInt("throughput"), null, new ThreadExecutorFactory(thread), TimeSpan.FromSeconds(1));

        public override MessageDispatcher Dispatcher() => _dispatcher;
    }

    private sealed class ThreadExecutorFactory(ComputeThread thread) : ExecutorServiceFactory
    {
        public override ExecutorService Produce(string id) => new ThreadExecutor(id, thread);
    }

    private sealed class ThreadExecutor(string id, ComputeThread thread) : ExecutorService(id)
    {
        public override void Execute(IRunnable run) => thread.Execute(run);

        public override void Shutdown()
        {
        }
    }
}
