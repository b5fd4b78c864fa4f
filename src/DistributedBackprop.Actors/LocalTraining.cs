using Akka.Actor;
using Akka.Configuration;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors;

/// <summary>
/// Single-node local mode: one ActorSystem holding the coordinator, the parameter server and N workers, the
/// server and the workers on N dedicated threads (<see cref="ComputeThreads"/>).
/// Configuration comes from cluster-config/local.hocon (embedded in this assembly), with
/// <paramref name="overrides"/> on top.
/// </summary>
public sealed class LocalTraining : IAsyncDisposable
{
    private readonly TaskCompletionSource<TrainingOutcome> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ComputeThreads _threads;

    private LocalTraining(TrainingSession session, int workers, ITrainingObserver observer, CheckpointPolicy? checkpoints, Config? overrides, int serverShards)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(workers, 1);
        System = ActorSystem.Create("dbp", ResolveConfig(overrides));
        _threads = new ComputeThreads(workers, "dbp-compute");
        _threads.Install(System);
        Coordinator = System.ActorOf(TrainingCoordinator.Props(session, workers, observer, checkpoints, _completion, serverShards: serverShards, threads: _threads), "coordinator");
    }

    public ActorSystem System { get; }

    public IActorRef Coordinator { get; }

    /// <summary>Completes when the session has run all its steps, or fails with <see cref="TrainingFailedException"/>.</summary>
    public Task<TrainingOutcome> Completion => _completion.Task;

    /// <param name="serverShards">parameter shards beside the workers (<c>--server-shards</c>); the bits are the same for any count.</param>
    public static LocalTraining Start(TrainingSession session, int workers, ITrainingObserver observer, CheckpointPolicy? checkpoints = null, Config? overrides = null, int serverShards = 1) =>
        new(session, workers, observer, checkpoints, overrides, serverShards);

    /// <summary>Runs a whole session and shuts the actor system down.</summary>
    public static async Task<TrainingOutcome> RunAsync(TrainingSession session, int workers, ITrainingObserver observer, CheckpointPolicy? checkpoints = null, CancellationToken cancellation = default)
    {
        await using LocalTraining run = Start(session, workers, observer, checkpoints);
        return await run.Completion.WaitAsync(cancellation).ConfigureAwait(false);
    }

    /// <summary>
    /// What a run is configured with: <paramref name="overrides"/>, then DBP_UPDATE_LAYOUT, then the embedded
    /// local.hocon; a bad value of dbp.update-layout is an <see cref="ArgumentException"/> naming where it came from.
    /// Commands call this before they print anything, so a bad setting ends the run at once.
    /// </summary>
    public static Config ResolveConfig(Config? overrides = null)
    {
        Config config = LoadConfig();
        if (UpdateLayout.FromEnvironment() is { } layout)
        {
            config = ConfigurationFactory.ParseString($"dbp.update-layout = {layout}").WithFallback(config);
        }
        if (overrides is not null)
        {
            config = overrides.WithFallback(config);
        }
        UpdateLayout.Check(config.GetString("dbp.update-layout", UpdateLayout.Auto), "dbp.update-layout");
        return config;
    }

    /// <summary>The embedded cluster-config/local.hocon.</summary>
    public static Config LoadConfig()
    {
        using Stream stream = typeof(LocalTraining).Assembly.GetManifestResourceStream("DistributedBackprop.Actors.local.hocon")
            ?? throw new InvalidOperationException("local.hocon is missing from the assembly");
        using var reader = new StreamReader(stream);
        return ConfigurationFactory.ParseString(reader.ReadToEnd());
    }

    public async ValueTask DisposeAsync()
    {
        // Stop the whole tree at once (the server then does not mourn each worker), then the system.
        try
        {
            await Coordinator.GracefulStop(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (TaskCanceledException)
        {
            // Timed out: terminating the system below stops everything anyway.
        }
        try
        {
            await System.Terminate().ConfigureAwait(false);
        }
        finally
        {
            _threads.Dispose();
        }
    }
}
