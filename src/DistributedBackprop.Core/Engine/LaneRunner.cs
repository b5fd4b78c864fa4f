namespace DistributedBackprop.Engine;

/// <summary>
/// Runs one piece of work on each of N lanes per call, lane 0 on the caller's thread and the others on
/// dedicated background threads, meeting at a barrier. Unlike Parallel.For it allocates nothing per call,
/// and each lane keeps its thread (and so its thread-local packing buffers) for the whole run.
/// </summary>
internal sealed class LaneRunner : IDisposable
{
    private readonly Action<int> _work;
    private readonly Barrier _start;
    private readonly Barrier _end;
    private readonly Thread[] _threads;
    private readonly Exception?[] _errors;
    private volatile bool _stopping;

    public LaneRunner(int lanes, Action<int> work, string name)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(lanes, 1);
        _work = work;
        _start = new Barrier(lanes);
        _end = new Barrier(lanes);
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

    public void Run()
    {
        _start.SignalAndWait();
        RunLane(0);
        _end.SignalAndWait();
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
        while (true)
        {
            _start.SignalAndWait();
            if (_stopping)
            {
                return;
            }
            RunLane(lane);
            _end.SignalAndWait();
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
        if (_threads.Length > 0 && !_stopping)
        {
            _stopping = true;
            _start.SignalAndWait();
            foreach (Thread thread in _threads)
            {
                thread.Join();
            }
        }
        _start.Dispose();
        _end.Dispose();
    }
}
