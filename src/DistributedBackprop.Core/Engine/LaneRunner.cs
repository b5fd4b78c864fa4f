namespace DistributedBackprop.Engine;

/// <summary>
/// Runs one piece of work on each of N lanes per call, lane 0 on the caller's thread and the others on
/// dedicated background threads. Lanes wait for work by spinning briefly and then sleeping on an event,
/// so a step's hand-off costs microseconds; unlike Parallel.For nothing is allocated per call, and each
/// lane keeps its thread (and so its thread-local packing buffers) for the whole run.
/// </summary>
internal sealed class LaneRunner : IDisposable
{
    private const int SpinIterations = 20_000;
    private Action<int> _work = _ => { };
    private readonly Thread[] _threads;
    private readonly Exception?[] _errors;
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 1);
    private long _generation;
    private int _pending;
    private volatile bool _stopping;

    public LaneRunner(int lanes, string name)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(lanes, 1);
        _errors = new Exception?[lanes];
        _threads = new Thread[lanes - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            int lane = i + 1;
            _threads[i] = new Thread(() => Loop(lane)) { IsBackground = true, Name = $"{name}-{lane}" };
            _threads[i].Start();
        }
    }

    public int Lanes => _errors.Length;

    /// <summary>Runs <paramref name="work"/>(lane) on every lane and returns when all are done. Pass a cached delegate.</summary>
    public void Run(Action<int> work)
    {
        _work = work;
        Volatile.Write(ref _pending, _threads.Length);
        Interlocked.Increment(ref _generation);
        if (_threads.Length > 0)
        {
            _wake.Set();
        }
        RunLane(0);
        var spinner = new SpinWait();
        while (Volatile.Read(ref _pending) > 0)
        {
            spinner.SpinOnce(sleep1Threshold: -1);
        }
        _wake.Reset();
        foreach (Exception? error in _errors)
        {
            if (error is not null)
            {
                Array.Clear(_errors);
                throw new AggregateException(error);
            }
        }
    }

    private void Loop(int lane)
    {
        long seen = 0;
        while (true)
        {
            // Spin first: between training steps the gap is short, and waking a sleeping thread costs more.
            int spins = 0;
            while (Volatile.Read(ref _generation) == seen && !_stopping)
            {
                if (++spins > SpinIterations)
                {
                    _wake.Wait();
                }
                else
                {
                    Thread.SpinWait(20);
                }
            }
            if (_stopping)
            {
                return;
            }
            seen = Volatile.Read(ref _generation);
            RunLane(lane);
            Interlocked.Decrement(ref _pending);
        }
    }

    private void RunLane(int lane)
    {
        try
        {
            _work(lane);
        }
        catch (Exception e)
        {
            _errors[lane] = e;
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _wake.Set();
        foreach (Thread thread in _threads)
        {
            thread.Join();
        }
        _wake.Dispose();
    }
}
