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
}
