using System.Security.Cryptography;
using System.Runtime.InteropServices;
using DistributedBackprop.Kernels;

namespace DistributedBackprop.Data;

/// <summary>
/// A labelled data set in memory: features row-major (Rows × Features, float32) and, per row, the index
/// of its class in <see cref="Classes"/>. Immutable after construction by convention: many workers read
/// the same instance at once.
/// </summary>
public sealed class Dataset
{
    public Dataset(string source, int features, float[] values, int[] labels, IReadOnlyList<string> classes, DataKind kind)
    {
        if (features < 1)
        {
            throw new ArgumentException("a data set needs at least one feature");
        }
        if (values.Length != (long)labels.Length * features)
        {
            throw new ArgumentException($"{values.Length} values do not make {labels.Length} rows of {features} features");
        }
        Source = source;
        Features = features;
        Values = values;
        Labels = labels;
        Classes = classes;
        Kind = kind;
        _byteCoded = new Lazy<ByteCodedValues?>(() => ByteCodedValues.TryEncode(values, ByteCodedValues.ImageScale));
    }

    private readonly Lazy<ByteCodedValues?> _byteCoded;

    /// <summary>False when the rows carry no labels (data for `predict`); every label is then −1.</summary>
    public bool IsLabelled => Labels.Length == 0 || Labels[0] >= 0;

    /// <summary>Where the data came from (a path, or "digits (embedded)"), for messages.</summary>
    public string Source { get; }
    public int Rows => Labels.Length;
    public int Features { get; }
    public float[] Values { get; }
    public int[] Labels { get; }
    public IReadOnlyList<string> Classes { get; }
    public DataKind Kind { get; }

    public ReadOnlySpan<float> Row(int row) => Values.AsSpan(row * Features, Features);

    /// <summary>
    /// <see cref="Values"/> as one byte each when every value is code × <see cref="ByteCodedValues.ImageScale"/>
    /// (images scaled to [0, 1]), else null. Made on first use, once, by whichever reader asks first.
    /// </summary>
    public ByteCodedValues? ByteCoded => _byteCoded.Value;

    /// <summary>Whether <see cref="ByteCoded"/> has been asked for (and so made, or found impossible), without asking.</summary>
    public bool ByteCodesMade => _byteCoded.IsValueCreated;

    /// <summary>The rows at <paramref name="indices"/>, in that order.</summary>
    public Dataset Subset(ReadOnlySpan<int> indices, string? source = null)
    {
        var values = new float[indices.Length * Features];
        RowGather.Copy(Values, Features, indices, values);
        var labels = new int[indices.Length];
        for (int i = 0; i < indices.Length; i++)
        {
            labels[i] = Labels[indices[i]];
        }
        return new Dataset(source ?? Source, Features, values, labels, Classes, Kind);
    }

    /// <summary>
    /// SHA-256 over the shape, class names, features (raw little-endian float32) and labels: two nodes that
    /// loaded the same data agree on it, whatever path or file format they read it from.
    /// </summary>
    public string ContentHash()
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(BitConverter.GetBytes(Rows));
        hash.AppendData(BitConverter.GetBytes(Features));
        foreach (string name in Classes)
        {
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes(name));
            hash.AppendData([0]);
        }
        hash.AppendData(MemoryMarshal.AsBytes(Values.AsSpan()));
        hash.AppendData(MemoryMarshal.AsBytes(Labels.AsSpan()));
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}

/// <summary>What the features are; decides the default preprocessing.</summary>
public enum DataKind
{
    /// <summary>Numeric table (CSV): standardised with the training rows' mean and standard deviation.</summary>
    Table,
    /// <summary>8-bit images (IDX): scaled to [0, 1].</summary>
    Images,
}
