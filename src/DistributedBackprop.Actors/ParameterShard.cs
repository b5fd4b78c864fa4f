using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Engine;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors;

/// <summary>
/// One parameter shard (<c>--server-shards K</c>): owns a contiguous slice of θ and of the optimizer state
/// (<see cref="ShardUpdate"/>, where the arithmetic is). Runs beside the workers — on a worker node in a
/// cluster, so that node's link carries its slice for every worker instead of the server's link carrying
/// all of θ for every worker.
///
/// Protocol, per step: workers send their slices of each node gradient in pieces, each as soon as the backward pass
/// has finished it (<see cref="GradientSlice"/>, <see cref="ShardUpdate.Pieces"/>); a piece is summed when the chunk
/// tree is covered for it, and when every piece is, the shard reports <see cref="SliceReduced"/> (finite or not) to the
/// parameter server; the server, once every shard's sum is finite, sends <see cref="ApplySlice"/> with γ and
/// the workers; the shard applies, reports <see cref="SliceApplied"/> and sends each worker θ's slice for the
/// next step (<see cref="ParameterSlice"/>). <see cref="PublishSlice"/> sends the current slice to newcomers,
/// <see cref="CollectSlice"/> returns the state (checkpoints, evaluation). Control comes only from the server,
/// gradients only from the workers the server last named; the rest is dropped and logged. Messages from the
/// server arrive in order, so a collect always sees the state of the last apply sent before it.
/// </summary>
public sealed class ParameterShard : ReceiveActor
{
    private readonly IActorRef _server;
    private readonly int _shard;
    private readonly int _parts;
    private readonly ShardUpdate _update;
    private readonly Courier _courier = Courier.Get(Context.System);
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly HashSet<IActorRef> _workers = [];
    private readonly List<(float[] Array, FloatArrayPool Pool)> _pooled = [];
    private readonly List<IActorRef> _recipients = [];
    private long _step;
    private long _dropped;

    public ParameterShard(IActorRef server, int shard, int parts, ShardUpdate update, long step)
    {
        _server = server;
        _shard = shard;
        _parts = parts;
        _update = update;
        _step = step;
        Receive<GradientSlice>(Accept);
        Receive<ApplySlice>(_ => FromServer(), Apply);
        Receive<PublishSlice>(_ => FromServer(), m => Publish(m.Workers));
        Receive<AskMissing>(_ => FromServer(), m =>
        {
            // Summed already (the answer crossed the question), or an old step: nothing is missing here.
            List<(int Lo, int Hi)> runs = m.Step == _step && !_update.IsComplete ? _update.MissingRuns() : [];
            _courier.Send(_server, new SliceMissing(m.Step, _shard, runs.Select(r => r.Lo).ToArray(), runs.Select(r => r.Hi).ToArray()), Self);
        });
        Receive<CollectSlice>(_ => FromServer(), m =>
            _courier.Send(_server, new SliceCollected(m.Request, _shard, _step, _update.OptimizerSteps, (float[])_update.Parameters.Clone(), _update.StateSlices()), Self));
        Receive<IWireMessage>(m => _log.Warning("shard {0} dropped a {1} from {2}: only the parameter server may send it", _shard, m.GetType().Name, Sender.Path));
        Receive<DeliveryFailed>(f => f.Recipient.Path.Equals(_server.Path), f =>
        {
            // The server would wait for ever for what it did not get: stopping ends the shard's part, which the
            // server sees (DeathWatch) and answers by stopping the run for a resume.
            _log.Error("shard {0} could not deliver a {1} to the parameter server ({2}); stopping", _shard, f.Message.GetType().Name, f.Reason);
            Context.Stop(Self);
        });
        // A worker that cannot be reached asks again: the server deals its work to others, and sends their θ again.
        Receive<DeliveryFailed>(f => _log.Warning("shard {0} could not deliver a {1} to {2} ({3})", _shard, f.Message.GetType().Name, f.Recipient.Path, f.Reason));
    }

    public static Props Props(IActorRef server, int shard, int parts, ShardUpdate update, long step) =>
        Akka.Actor.Props.Create(() => new ParameterShard(server, shard, parts, update, step));

    protected override void PreStart() => _courier.Send(_server, new ShardReady(_shard, _step), Self);

    protected override void PostStop() => ReturnPooled();

    private bool FromServer() => Sender.Path.Equals(_server.Path);

    private void Accept(GradientSlice slice)
    {
        if (!_workers.Contains(Sender) || slice.Step != _step || _update.IsComplete)
        {
            // A stranger, or a step this shard has summed already (a speculative duplicate arriving late).
            slice.Pool?.Return(slice.Values);
            if (++_dropped <= 10 && !_workers.Contains(Sender))
            {
                _log.Warning("shard {0} dropped gradients for step {1} from {2}: not a registered worker", _shard, slice.Step, Sender.Path);
            }
            return;
        }
        if (!ChunkTree.IsCanonical(slice.Node, _parts) || _update.PieceAt(slice.Offset, slice.Values.Length) < 0)
        {
            _courier.Send(_server, new ShardFailed(_shard, $"{Sender.Path} sent shard {_shard} a gradient piece of {slice.Values.Length} values at {slice.Offset} for node {slice.Node} of step {slice.Step}; the shard holds {_update.Count} parameters in {_update.Pieces.Count} pieces, of a tree over {_parts} parts"), Self);
            return;
        }
        if (!_update.TryAdd(slice.Node, slice.Offset, slice.Values))
        {
            slice.Pool?.Return(slice.Values);
            return;
        }
        if (slice.Pool is { } pool)
        {
            _pooled.Add((slice.Values, pool));
        }
        if (_update.IsComplete)
        {
            StepTimeline.MarkShard("slice-summing", _step, _shard);
            _courier.Send(_server, new SliceReduced(_step, _shard, _update.Reduce()), Self);
        }
    }

    private void Apply(ApplySlice message)
    {
        if (message.Step != _step || !_update.IsComplete)
        {
            _courier.Send(_server, new ShardFailed(_shard, $"asked to apply step {message.Step}, but shard {_shard} has {(_update.IsComplete ? "summed" : "not yet summed")} step {_step}"), Self);
            return;
        }
        StepTimeline.MarkShard("slice-applying", message.Step, _shard);
        bool finite = _update.Apply(message.LearningRate);
        StepTimeline.MarkShard("slice-applied", message.Step, _shard);
        _courier.Send(_server, new SliceApplied(message.Step, _shard, finite), Self);
        _update.Reset();
        ReturnPooled();
        _step = message.NextStep;
        _workers.Clear();
        Publish(message.Workers);
    }

    /// <summary>
    /// θ's slice as it is now, to each of <paramref name="workers"/>, in pieces in the order the forward pass needs
    /// them (<see cref="ShardUpdate.ParameterPieces"/>); their gradient slices are taken from now on.
    /// </summary>
    private void Publish(IReadOnlyList<PeerActor> workers)
    {
        List<IActorRef> recipients = _recipients;
        recipients.Clear();
        foreach (PeerActor peer in workers)
        {
            if (_courier.Resolve(peer) is { } worker)
            {
                _workers.Add(worker);
                recipients.Add(worker);
            }
        }
        foreach (var (offset, count) in _update.ParameterPieces)
        {
            // A fresh copy: the workers (and the bulk channel's queues) read it after the next apply has rewritten
            // the slice. One copy serves every worker: it is never written.
            var piece = new ParameterSlice(_step, _shard, offset, _update.Parameters.AsSpan(offset, count).ToArray());
            foreach (IActorRef worker in recipients)
            {
                _courier.Send(worker, piece, Self);
            }
        }
    }

    private void ReturnPooled()
    {
        foreach (var (array, pool) in _pooled)
        {
            pool.Return(array);
        }
        _pooled.Clear();
    }
}
