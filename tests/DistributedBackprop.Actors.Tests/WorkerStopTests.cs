using Akka;
using Akka.Actor;
using Akka.Configuration;
using DistributedBackprop.Actors.Cluster;

namespace DistributedBackprop.Actors.Tests;

/// <summary>
/// A worker that lost its server stops its old node before knocking again; a node that takes long to stop
/// (Akka's shutdown phases waiting on peers it cannot reach) must not hold the rejoin back.
/// </summary>
public sealed class WorkerStopTests
{
    /// <summary>A system whose shutdown waits for <paramref name="release"/> (the phase's own timeout is far longer than any test).</summary>
    private static ActorSystem SlowToStop(TaskCompletionSource release)
    {
        ActorSystem system = ActorSystem.Create("slow", ConfigurationFactory.ParseString(
            "akka.coordinated-shutdown.phases.before-actor-system-terminate.timeout = 300s"));
        CoordinatedShutdown.Get(system).AddTask(CoordinatedShutdown.PhaseBeforeActorSystemTerminate, "held", async () =>
        {
            await release.Task.ConfigureAwait(false);
            return Done.Instance;
        });
        return system;
    }

    [Fact]
    public async Task ANodeAboutToRejoin_StopsWaitingForItsOldSystem_AndSaysSo()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ActorSystem system = SlowToStop(release);
        var said = new List<string>();

        await ClusterWorker.StopAsync(system, waitForAll: false, said.Add).WaitAsync(TimeSpan.FromMinutes(1));

        // Returned while the old system is still stopping: it cannot terminate before the release below.
        Assert.False(system.WhenTerminated.IsCompleted);
        Assert.Contains(said, line => line.Contains("still stopping", StringComparison.Ordinal));
        release.SetResult();
        await system.WhenTerminated.WaitAsync(TimeSpan.FromMinutes(1));
    }

    [Fact]
    public async Task APinnedPort_WaitsUntilTheOldSystemHasStopped()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ActorSystem system = SlowToStop(release);
        Task stopping = ClusterWorker.StopAsync(system, waitForAll: true, _ => { });
        // Past the patience a rejoining node allows, the stop is still waiting for the system.
        await Task.Delay(ClusterWorker.StopPatience + TimeSpan.FromSeconds(1));
        Assert.False(stopping.IsCompleted);
        release.SetResult();
        await stopping.WaitAsync(TimeSpan.FromMinutes(1));
        Assert.True(system.WhenTerminated.IsCompleted);
    }
}
