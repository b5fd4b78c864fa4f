using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Actors.Serialization;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors.Tests;

/// <summary>The bulk channel's size limits let the run's real frames through, and not a byte more.</summary>
public sealed class InboundPolicyTests
{
    private static long PayloadBytes(object message)
    {
        using var stream = new MemoryStream();
        WireFormat.Write(stream, message);
        return stream.Length;
    }

    [Theory]
    [InlineData(0)]
    [InlineData(64)]
    [InlineData(1024)]
    public void AGradientFrame_CarryingEveryReplicasFigures_FitsTheTensorLimit(int replicas)
    {
        const int parameters = 1000;
        InboundPolicy policy = InboundPolicy.ServerNode();
        policy.SetRun(parameters, 10, replicas);
        // The largest a worker sends: one node covering every replica, each with its figures.
        var largest = new GradientsComputed(long.MaxValue, new TreeNode(0, Math.Max(1, replicas)), new BatchResult(1, 2, 3), new float[parameters], 0.5)
        {
            PartResults = new BatchResult[replicas],
        };
        long bytes = PayloadBytes(largest);
        Assert.Null(policy.Check("GC", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, bytes));
        // Bounded all the same: a frame a kilobyte past what the run can need is refused.
        Assert.Contains("exceeds its limit", policy.Check("GC", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, bytes + 1024));
    }

    [Fact]
    public void ShardFrames_GoOnlyToShards_FromTheRightRole_WithinTheRunsSizes()
    {
        const int parameters = 1000;
        InboundPolicy worker = InboundPolicy.WorkerNode(), server = InboundPolicy.ServerNode();
        worker.SetRun(parameters, 10);
        server.SetRun(parameters, 10);
        string shard = ClusterNaming.ShardPathPrefix + "0-1";
        long slice = PayloadBytes(new GradientSlice(long.MaxValue, new TreeNode(0, 8), int.MaxValue, new float[parameters]));
        Assert.Null(worker.Check("GL", shard, ClusterNaming.WorkerRole, slice));
        Assert.Contains("may only go to", worker.Check("GL", ClusterNaming.WorkerActorPath, ClusterNaming.WorkerRole, slice));
        Assert.Contains("may only go to", worker.Check("GL", "/user/worker-agent", ClusterNaming.WorkerRole, slice));
        Assert.Contains("exceeds its limit", worker.Check("GL", shard, ClusterNaming.WorkerRole, slice + 1024));
        // Control of a shard comes from the server only; θ slices reach the worker from other worker nodes' shards.
        Assert.Contains("may only come from a parameter-server node", worker.Check("AP", shard, ClusterNaming.WorkerRole, 100));
        Assert.Null(worker.Check("AP", shard, ClusterNaming.ServerRole, 100));
        Assert.Null(worker.Check("PL", ClusterNaming.WorkerActorPath, ClusterNaming.WorkerRole, PayloadBytes(new ParameterSlice(1, 0, 0, new float[parameters]))));
        // A shard's whole state (Adam: θ, m and v) fits; the server takes it only from worker nodes.
        long state = PayloadBytes(new SliceCollected(1, 0, 2, 3, new float[parameters], [new float[parameters], new float[parameters]]));
        Assert.Null(server.Check("SX", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, state));
        Assert.Contains("exceeds its limit", server.Check("SX", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, state + 1024));
        Assert.Null(worker.Check("HS", "/user/" + ClusterNaming.WorkerAgentName, ClusterNaming.ServerRole, PayloadBytes(new HostShard(0, 1, 0, 0, new float[parameters], [new float[parameters], new float[parameters]]))));
        Assert.Contains("is not accepted", server.Check("GL", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, slice));
    }
}
