using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Actors.Serialization;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>Where the server found its data, so joining workers can load the same rows.</summary>
public sealed record ServerData(string? DataPath, string? LabelColumn, double TestFraction, CsvHeader CsvHeader = CsvHeader.Auto);

/// <summary>Local: tell every joined worker node that training is over; answered with <see cref="Status.Success"/>.</summary>
public sealed record AnnounceFinish(TrainingFinished Message) : INoSerializationVerificationNeeded;

/// <summary>
/// The server node's door. A worker node's agent sends <see cref="JoinRequest"/>; the gatekeeper checks the
/// protocol version and Akka frame size (all nodes must agree), records the node's bulk channel endpoint,
/// and answers <see cref="JoinAccepted"/> (the run's configuration, the data to load, the preprocessing and
/// hashes to match) or <see cref="JoinRefused"/>. It streams the training rows to admitted nodes that
/// said they need them (<see cref="RequestTrainingData"/>) and, at the end, tells every node
/// <see cref="TrainingFinished"/>. Every answer travels on the bulk channel (<see cref="Courier"/>), whose
/// connections are authenticated; a node's bulk endpoint must be on its own Akka host.
/// Registration for work itself happens between the node's worker and the parameter server.
/// </summary>
public sealed class Gatekeeper : ReceiveActor, IWithTimers
{
    /// <summary>Bytes of rows per streamed chunk (the receiving side's frame limit follows from it).</summary>
    public const int ChunkBytes = 1 << 20;
    private readonly TrainingSession _session;
    private readonly ServerData _data;
    private readonly long _frameSize;
    private readonly Courier _courier = Courier.Get(Context.System);
    private readonly HashSet<IActorRef> _agents = [];
    private readonly HashSet<IActorRef> _streamed = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private TrainingFinished? _finished;

    public Gatekeeper(TrainingSession session, ServerData data, long frameSize)
    {
        _session = session;
        _data = data;
        _frameSize = frameSize;
        Receive<JoinRequest>(Join);
        Receive<RequestTrainingData>(_ =>
        {
            if (!_agents.Contains(Sender) || !_streamed.Remove(Sender))
            {
                _log.Warning("refused to stream the training data to {0}: not an admitted node that asked for it at join", Sender.Path);
                return;
            }
            // Streaming may wait on the channel's flow control: off the actor.
            IActorRef agent = Sender, self = Self;
            Task.Run(() => Stream(agent, self));
        });
        Receive<AnnounceFinish>(Announce);
        Receive<ResendFinish>(_ => TellFinished());
        Receive<DeliveryFailed>(f => _log.Error("cannot reach node {0} over its bulk channel: {1}", f.Recipient.Path.Address, f.Reason));
        // A node that leaves on purpose (its worker stopped by SIGTERM or Ctrl-C) is announced to the parameter
        // server, which lets its worker go at once as a leave, not later (DeathWatch waits for the removal) as a death.
        Receive<Akka.Cluster.ClusterEvent.MemberLeft>(m =>
            Context.System.ActorSelection(ClusterNaming.ParameterServerPath).Tell(new NodeLeaving(m.Member.Address), Self));
        Receive<Terminated>(t =>
        {
            _agents.Remove(t.ActorRef);
            _streamed.Remove(t.ActorRef);
            _courier.ForgetPeer(t.ActorRef.Path.Address);
        });
    }

    protected override void PreStart() => Akka.Cluster.Cluster.Get(Context.System).Subscribe(Self, typeof(Akka.Cluster.ClusterEvent.MemberLeft));

    protected override void PostStop() => Akka.Cluster.Cluster.Get(Context.System).Unsubscribe(Self);

    public static Props Props(TrainingSession session, ServerData data, long frameSize) =>
        Akka.Actor.Props.Create(() => new Gatekeeper(session, data, frameSize));

    private void Join(JoinRequest request)
    {
        string? problem = !ValidEndpoint(request.BulkEndpoint, Sender.Path.Address)
            ? $"node {request.NodeName} announced '{request.BulkEndpoint}', which is not a HOST:PORT bulk endpoint on its own host {Sender.Path.Address.Host}"
            : request.ProtocolVersion != WireFormat.ProtocolVersion
            ? $"node {request.NodeName} speaks protocol version {request.ProtocolVersion}, the server {WireFormat.ProtocolVersion}"
            : request.MaximumFrameSize != _frameSize
            ? $"node {request.NodeName} runs with akka.remote.dot-netty.tcp.maximum-frame-size = {request.MaximumFrameSize}, the server with {_frameSize}; all nodes must agree"
            : null;
        if (problem is not null)
        {
            _log.Error("refused node {0}: {1}", request.NodeName, problem);
            // The answer must travel on the bulk channel: the endpoint is known just long enough to say no
            // (a queued frame is still written after the peer is forgotten), so the node is never admitted.
            if (ValidEndpoint(request.BulkEndpoint, Sender.Path.Address))
            {
                _courier.RegisterPeer(Sender.Path.Address, request.BulkEndpoint);
                _courier.Send(Sender, new JoinRefused(problem), Self);
                _courier.ForgetPeer(Sender.Path.Address);
            }
            return;
        }
        _courier.RegisterPeer(Sender.Path.Address, request.BulkEndpoint);
        if (request.WantsStreamedData)
        {
            _streamed.Add(Sender);
        }
        if (_agents.Add(Sender))
        {
            Context.Watch(Sender);
            _log.Info("node {0} joined from {1} (bulk channel {2})", request.NodeName, Sender.Path.Address, request.BulkEndpoint);
        }
        _courier.Send(Sender, new JoinAccepted(
            _session.Config.ToJson(), _data.DataPath, _data.LabelColumn, _data.CsvHeader, _data.TestFraction, _session.DataHash,
            _session.Architecture.Describe(), _session.Preprocessing.Shift, _session.Preprocessing.Scale), Self);
    }

    private static bool ValidEndpoint(string endpoint, Address node)
    {
        try
        {
            return string.Equals(BulkChannel.ParseEndpoint(endpoint).Host, node.Host?.Trim('[', ']'), StringComparison.OrdinalIgnoreCase);
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    /// <summary>The preprocessed training rows, in chunks of about a megabyte, over the bulk channel.</summary>
    private void Stream(IActorRef agent, IActorRef self)
    {
        var train = _session.Train;
        int rowsPerChunk = Math.Max(1, ChunkBytes / (train.Features * sizeof(float)));
        for (int first = 0; first < train.Rows; first += rowsPerChunk)
        {
            int rows = Math.Min(rowsPerChunk, train.Rows - first);
            _courier.Send(agent, new TrainingDataChunk(first, train.Rows, train.Features,
                train.Values.AsSpan(first * train.Features, rows * train.Features).ToArray(), train.Labels.AsSpan(first, rows).ToArray()), self, waitForRoom: true);
        }
        _log.Info("streamed {0} training rows to {1}", train.Rows, agent.Path.Address); // the adapter is thread-safe; Context is not used here
    }

    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>
    /// Tells every admitted node how training ended, and tells it again each second until the node has left
    /// (its agent's Terminated removes it): a frame can queue behind a slow worker's tensors or be lost with a
    /// connection, and a node that never hears it would take the server's leaving for a crash and knock at
    /// its door for minutes. The server waits for the nodes to leave before it goes (ClusterServer).
    /// </summary>
    private void Announce(AnnounceFinish finish)
    {
        _finished = finish.Message;
        TellFinished();
        Timers.StartPeriodicTimer("finish", ResendFinish.Instance, TimeSpan.FromSeconds(1));
        Sender.Tell(new Status.Success(_agents.Count));
    }

    private void TellFinished()
    {
        if (_agents.Count == 0)
        {
            Timers.Cancel("finish");
        }
        foreach (IActorRef agent in _agents)
        {
            _courier.Send(agent, _finished!, Self);
        }
    }

    private sealed record ResendFinish : INoSerializationVerificationNeeded
    {
        public static readonly ResendFinish Instance = new();
    }
}
