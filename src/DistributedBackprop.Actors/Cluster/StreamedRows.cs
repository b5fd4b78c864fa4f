using DistributedBackprop.Data;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// The training rows a server streams to a worker node that has no copy of the data (<see cref="TrainingDataChunk"/>),
/// put together. A chunk's sizes are checked against the run's before anything is allocated or copied; a chunk that
/// arrives again is dropped, not counted twice, and one that overlaps rows already in is malformed; once every row is
/// in they are a <see cref="Dataset"/> the worker trains on (and whose byte codes it may have made), so nothing writes
/// them again.
/// </summary>
public sealed class StreamedRows(int features, IReadOnlyList<string> classes)
{
    private float[]? _values;
    private int[]? _labels;
    private bool[]? _arrived;
    private readonly HashSet<(int FirstRow, int Rows)> _chunks = [];
    private int _rows;

    /// <summary>What one chunk did.</summary>
    public enum Outcome
    {
        /// <summary>Its sizes do not fit the run's or the chunks before it, or it overlaps rows already in: nothing was kept.</summary>
        Malformed,
        /// <summary>Kept; rows are still missing.</summary>
        Kept,
        /// <summary>Kept, and it was the last: <see cref="Rows"/> is the data set.</summary>
        Completed,
        /// <summary>A chunk already in, or any chunk once every row is: dropped.</summary>
        Dropped,
    }

    /// <summary>The streamed data set, once <see cref="Add"/> has said <see cref="Outcome.Completed"/>.</summary>
    public Dataset? Rows { get; private set; }

    public Outcome Add(TrainingDataChunk chunk)
    {
        if (Rows is not null)
        {
            return Outcome.Dropped;
        }
        if (chunk.Features != features || chunk.TotalRows <= 0 || chunk.FirstRow < 0 || (long)chunk.TotalRows * features > Array.MaxLength
            || chunk.Labels.Length == 0 || (long)chunk.FirstRow + chunk.Labels.Length > chunk.TotalRows || chunk.Values.Length != (long)chunk.Labels.Length * features
            || (_labels is not null && _labels.Length != chunk.TotalRows))
        {
            return Outcome.Malformed;
        }
        if (_chunks.Contains((chunk.FirstRow, chunk.Labels.Length)))
        {
            return Outcome.Dropped;
        }
        _arrived ??= new bool[chunk.TotalRows];
        if (_arrived.AsSpan(chunk.FirstRow, chunk.Labels.Length).Contains(true))
        {
            return Outcome.Malformed;
        }
        _values ??= new float[(long)chunk.TotalRows * features];
        _labels ??= new int[chunk.TotalRows];
        chunk.Values.CopyTo(_values, (long)chunk.FirstRow * features);
        chunk.Labels.CopyTo(_labels, chunk.FirstRow);
        _arrived.AsSpan(chunk.FirstRow, chunk.Labels.Length).Fill(true);
        _chunks.Add((chunk.FirstRow, chunk.Labels.Length));
        _rows += chunk.Labels.Length;
        if (_rows < chunk.TotalRows)
        {
            return Outcome.Kept;
        }
        Rows = new Dataset("streamed from the server", features, _values, _labels, classes, DataKind.Table);
        _values = null;
        _labels = null;
        _arrived = null;
        return Outcome.Completed;
    }
}
