using System.Buffers.Binary;

namespace DistributedBackprop.Data;

/// <summary>
/// Reads the IDX format of the MNIST family (LeCun et al.): magic 00 00 08 d (unsigned bytes, d
/// dimensions), d big-endian int32 sizes, then the data. Files may be gzipped. Images: any d ≥ 2, each
/// item's trailing dimensions flattened into features; labels: d = 1. Classes are "0" … "max label", so a
/// label's class index is its value.
/// </summary>
public static class IdxReader
{
    public const string TrainImages = "train-images-idx3-ubyte";
    public const string TrainLabels = "train-labels-idx1-ubyte";
    public const string TestImages = "t10k-images-idx3-ubyte";
    public const string TestLabels = "t10k-labels-idx1-ubyte";

    public static Dataset Read(string imagesPath, string labelsPath)
    {
        (int[] imageDims, byte[] images) = ReadIdx(imagesPath);
        if (imageDims.Length < 2)
        {
            throw DataException.AtByte(imagesPath, 3, $"an images file needs at least 2 dimensions, this one has {imageDims.Length}");
        }
        (int[] labelDims, byte[] labelBytes) = ReadIdx(labelsPath);
        if (labelDims.Length != 1)
        {
            throw DataException.AtByte(labelsPath, 3, $"a labels file has 1 dimension, this one has {labelDims.Length}");
        }
        int count = imageDims[0];
        if (labelDims[0] != count)
        {
            throw DataException.InFile(imagesPath, $"{count} images but {labelsPath} has {labelDims[0]} labels");
        }
        if (count == 0)
        {
            throw DataException.InFile(imagesPath, "empty data set: 0 images");
        }
        // The data's length is the product of the dimensions (bounded by ReadIdx), so no product is taken again.
        int features = images.Length / count;
        if (features == 0)
        {
            throw DataException.InFile(imagesPath, $"{count} images of 0 features each (dimensions [{string.Join(", ", imageDims)}]); a data set needs at least one feature");
        }
        var values = new float[images.Length];
        for (long i = 0; i < values.Length; i++)
        {
            values[i] = images[i];
        }
        var labels = new int[count];
        int maxLabel = 0;
        for (int i = 0; i < count; i++)
        {
            labels[i] = labelBytes[i];
            maxLabel = Math.Max(maxLabel, labels[i]);
        }
        string[] classes = Enumerable.Range(0, maxLabel + 1).Select(c => c.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        return new Dataset(imagesPath, features, values, labels, classes, DataKind.Images);
    }

    /// <summary>Checks labels against a class list (test data must use the training classes).</summary>
    public static Dataset WithClasses(Dataset data, IReadOnlyList<string> classes, string labelsPath)
    {
        var index = new Dictionary<string, int>();
        for (int i = 0; i < classes.Count; i++)
        {
            index[classes[i]] = i;
        }
        var labels = new int[data.Rows];
        for (int r = 0; r < data.Rows; r++)
        {
            string name = data.Classes[data.Labels[r]];
            if (!index.TryGetValue(name, out labels[r]))
            {
                throw DataException.AtByte(labelsPath, 8 + r, $"label {name} is not in the class list ({string.Join(", ", classes)})");
            }
        }
        return new Dataset(data.Source, data.Features, data.Values, labels, classes, data.Kind);
    }

    /// <summary>
    /// The most data bytes one file may hold: every byte becomes a float in one array, and .NET arrays stop
    /// at <see cref="Array.MaxLength"/> elements.
    /// </summary>
    private static readonly long MaxDataBytes = Array.MaxLength;

    /// <summary>
    /// Reads the header, checks the sizes it promises, then reads exactly that much data and at most one byte
    /// more: a gzipped file is never decompressed further than its header allows (a small .gz can expand to
    /// gigabytes).
    /// </summary>
    private static (int[] Dims, byte[] Data) ReadIdx(string path)
    {
        using Stream stream = DataFiles.OpenMaybeGzip(path);
        var magic = new byte[4];
        int got = ReadUpTo(stream, path, magic, 0);
        if (got < 4)
        {
            throw DataException.AtByte(path, got, $"truncated: {got} bytes, an IDX header needs at least 4");
        }
        if (magic[0] != 0 || magic[1] != 0)
        {
            throw DataException.AtByte(path, 0, $"bad IDX magic {magic[0]:x2} {magic[1]:x2} {magic[2]:x2} {magic[3]:x2} (expected 00 00 08 nn)");
        }
        if (magic[2] != 0x08)
        {
            throw DataException.AtByte(path, 2, $"IDX data type 0x{magic[2]:x2} is not supported (only 0x08, unsigned bytes)");
        }
        int dims = magic[3];
        if (dims < 1)
        {
            throw DataException.AtByte(path, 3, "IDX file with 0 dimensions");
        }
        int headerLength = 4 + 4 * dims;
        var header = new byte[4 * dims];
        got = ReadUpTo(stream, path, header, 4);
        if (got < header.Length)
        {
            throw DataException.AtByte(path, 4 + got, $"truncated header: {dims} dimensions need {headerLength} bytes");
        }
        var sizes = new int[dims];
        for (int d = 0; d < dims; d++)
        {
            sizes[d] = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(4 * d));
            if (sizes[d] < 0)
            {
                throw DataException.AtByte(path, 4 + 4 * d, $"negative dimension {sizes[d]}");
            }
        }
        long items = DataFiles.ProductAtMost(sizes, MaxDataBytes)
            ?? throw DataException.AtByte(path, 4, $"the dimensions [{string.Join(", ", sizes)}] make more than {MaxDataBytes} data bytes, the most one IDX file can hold");
        long expected = headerLength + items;
        if (stream.CanSeek && stream.Length < expected)
        {
            throw DataException.AtByte(path, stream.Length, $"truncated: the header promises {items} data bytes ending at byte {expected}, the file ends at byte {stream.Length}");
        }
        // Grown as the bytes arrive, so a header that lies inside a .gz costs no more memory than the data.
        var data = new byte[Math.Min(items, 1 << 20)];
        int filled = 0;
        while (filled < items)
        {
            if (filled == data.Length)
            {
                Array.Resize(ref data, (int)Math.Min(items, 2L * data.Length));
            }
            int read = ReadUpTo(stream, path, data.AsSpan(filled), headerLength + filled);
            filled += read;
            if (filled < data.Length)
            {
                long end = headerLength + filled;
                throw DataException.AtByte(path, end, $"truncated: the header promises {items} data bytes ending at byte {expected}, the file ends at byte {end}");
            }
        }
        if (ReadUpTo(stream, path, new byte[1], expected) > 0)
        {
            string extra = stream.CanSeek ? $"{stream.Length - expected} unexpected bytes" : "unexpected bytes";
            throw DataException.AtByte(path, expected, $"{extra} after the data");
        }
        return (sizes, data);
    }

    /// <summary>Fills <paramref name="into"/> unless the stream ends first; returns the bytes read.</summary>
    private static int ReadUpTo(Stream stream, string path, Span<byte> into, long offset)
    {
        try
        {
            return stream.ReadAtLeast(into, into.Length, throwOnEndOfStream: false);
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException)
        {
            throw DataException.AtByte(path, offset, $"corrupt or truncated gzip stream ({e.Message})");
        }
    }
}
