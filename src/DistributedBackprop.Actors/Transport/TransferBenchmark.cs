using System.Diagnostics;
using Akka.Actor;
using Akka.Configuration;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors.Transport;

/// <summary>Sustained throughput of the bulk channel: gradient-sized messages from one process to another.</summary>
public sealed record TransferResult(long Messages, long Bytes, double Seconds)
{
    public double BytesPerSecond => Bytes / Seconds;
}

/// <summary>
/// Measures the bulk tensor channel between two processes: the receiving side runs
/// <see cref="Receive"/> (prints its endpoint and the sink's path), the sending side <see cref="Send"/>
/// streams <c>messages</c> gradient messages of <c>floats</c> values to it and waits for the sink's
/// acknowledgement of the last one, so the time covers delivery, not just queueing. With a state
/// directory both ends get certificates from one CA kept there and the channel runs mutual TLS, as in a
/// cluster; without one it is plain TCP (--insecure).
/// </summary>
public static class TransferBenchmark
{
    private static Config RemoteConfig() => ConfigurationFactory.ParseString("""
        akka.actor.provider = remote
        akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0, tcp-reuse-addr = off }
        """).WithFallback(LocalTraining.LoadConfig());

    /// <summary>Receiver: runs until <paramref name="expected"/> messages have arrived; writes "ready ENDPOINT PATH" first.</summary>
    public static void Receive(long expected, int floats, string? stateDirectory, TextWriter announce)
    {
        using ActorSystem system = ActorSystem.Create("dbp", RemoteConfig());
        var policy = InboundPolicy.Single("GC", "/user/sink", "bench");
        policy.SetRun(floats, 0);
        BulkChannel channel = Courier.Get(system).StartChannel("127.0.0.1", 0, "127.0.0.1", Identity(system, stateDirectory, "receiver"), policy);
        var done = new TaskCompletionSource();
        IActorRef sink = system.ActorOf(Props.Create(() => new Sink(expected, channel.Pool, done)), "sink");
        announce.WriteLine($"ready {channel.Endpoint} {Akka.Serialization.Serialization.SerializedActorPath(sink)}");
        announce.Flush();
        done.Task.Wait(TimeSpan.FromMinutes(10));
        // Let the acknowledgement leave before the system goes down.
        Thread.Sleep(TimeSpan.FromSeconds(2));
        system.Terminate().Wait(TimeSpan.FromSeconds(10));
    }

    /// <summary>Sender: connects to a receiver and streams gradient messages to its sink.</summary>
    public static TransferResult Send(string endpoint, string sinkPath, long messages, int floats, string? stateDirectory)
    {
        using ActorSystem system = ActorSystem.Create("dbp", RemoteConfig());
        BulkChannel channel = Courier.Get(system).StartChannel("127.0.0.1", 0, "127.0.0.1", Identity(system, stateDirectory, "sender"), InboundPolicy.None());
        var provider = ((ExtendedActorSystem)system).Provider;
        IActorRef sink = provider.ResolveActorRef(sinkPath);
        var warmed = new TaskCompletionSource();
        var acknowledged = new TaskCompletionSource();
        IActorRef self = system.ActorOf(Props.Create(() => new AckReceiver(warmed, acknowledged)), "sender");
        var gradient = new float[floats];
        for (int i = 0; i < floats; i++) gradient[i] = i * 1e-3f;
        var message = new GradientsComputed(0, new TreeNode(0, 1), new BatchResult(1, 0, 1), gradient, 0);
        // Warm the connection and the JIT; timing starts once the receiver has the warm-up message.
        channel.Send(endpoint, sink, message with { Step = -1 }, self, waitForRoom: true);
        if (!warmed.Task.Wait(TimeSpan.FromMinutes(1)))
        {
            throw new TimeoutException("the receiver did not acknowledge the warm-up message");
        }
        long bytesBefore = channel.BytesSent;
        var clock = Stopwatch.StartNew();
        for (long i = 0; i < messages; i++)
        {
            channel.Send(endpoint, sink, message with { Step = i }, self, waitForRoom: true);
        }
        if (!acknowledged.Task.Wait(TimeSpan.FromMinutes(5)))
        {
            throw new TimeoutException("the receiver did not acknowledge the last message within 5 minutes");
        }
        double seconds = clock.Elapsed.TotalSeconds;
        long bytes = channel.BytesSent - bytesBefore;
        system.Terminate().Wait(TimeSpan.FromSeconds(10));
        return new TransferResult(messages, bytes, seconds);
    }

    private static Security.NodeIdentity? Identity(ActorSystem system, string? stateDirectory, string name) =>
        stateDirectory is null ? null
            : Security.ClusterAuthority.LoadOrCreate(stateDirectory).IssueOwn("bench", name, ((ExtendedActorSystem)system).Provider.DefaultAddress.ToString());

    private sealed class Sink : ReceiveActor
    {
        public Sink(long expected, FloatArrayPool pool, TaskCompletionSource done)
        {
            long received = 0;
            Receive<GradientsComputed>(m =>
            {
                pool.Return(m.Gradient);
                if (m.Step < 0)
                {
                    Sender.Tell(new StepApplied(-1, 0, 0, default, 0));
                    return;
                }
                if (++received == expected)
                {
                    // The acknowledgement is small: it goes through Akka.Remote.
                    Sender.Tell(new StepApplied(received, 0, 0, default, 0));
                    done.TrySetResult();
                }
            });
        }
    }

    private sealed class AckReceiver : ReceiveActor
    {
        public AckReceiver(TaskCompletionSource warmed, TaskCompletionSource acknowledged) =>
            Receive<StepApplied>(m => (m.GlobalStep < 0 ? warmed : acknowledged).TrySetResult());
    }
}
