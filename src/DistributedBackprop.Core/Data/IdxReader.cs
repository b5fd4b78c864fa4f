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
        (int[] imageDims, byte[] images, int imageOffset) = ReadIdx(imagesPath);
        if (imageDims.Length < 2)
        {
            throw DataException.AtByte(imagesPath, 3, $"an images file needs at least 2 dimensions, this one has {imageDims.Length}");
        }
        (int[] labelDims, byte[] labelBytes, int labelOffset) = ReadIdx(labelsPath);
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
        int features = 1;
        for (int d = 1; d < imageDims.Length; d++)
        {
            features = checked(features * imageDims[d]);
        }
        var values = new float[(long)count * features];
        for (long i = 0; i < values.Length; i++)
        {
            values[i] = images[imageOffset + i];
        }
        var labels = new int[count];
        int maxLabel = 0;
        for (int i = 0; i < count; i++)
        {
            labels[i] = labelBytes[labelOffset + i];
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

    private static (int[] Dims, byte[] Bytes, int DataOffset) ReadIdx(string path)
    {
        byte[] bytes = DataFiles.ReadAllMaybeGzip(path);
        if (bytes.Length < 4)
        {
            throw DataException.AtByte(path, bytes.Length, $"truncated: {bytes.Length} bytes, an IDX header needs at least 4");
        }
        if (bytes[0] != 0 || bytes[1] != 0)
        {
            throw DataException.AtByte(path, 0, $"bad IDX magic {bytes[0]:x2} {bytes[1]:x2} {bytes[2]:x2} {bytes[3]:x2} (expected 00 00 08 nn)");
        }
        if (bytes[2] != 0x08)
        {
            throw DataException.AtByte(path, 2, $"IDX data type 0x{bytes[2]:x2} is not supported (only 0x08, unsigned bytes)");
        }
        int dims = bytes[3];
        if (dims < 1)
        {
            throw DataException.AtByte(path, 3, "IDX file with 0 dimensions");
        }
        int headerLength = 4 + 4 * dims;
        if (bytes.Length < headerLength)
        {
            throw DataException.AtByte(path, bytes.Length, $"truncated header: {dims} dimensions need {headerLength} bytes");
        }
        var sizes = new int[dims];
        long items = 1;
        for (int d = 0; d < dims; d++)
        {
            sizes[d] = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4 + 4 * d));
            if (sizes[d] < 0)
            {
                throw DataException.AtByte(path, 4 + 4 * d, $"negative dimension {sizes[d]}");
            }
            items *= sizes[d];
        }
        long expected = headerLength + items;
        if (bytes.Length < expected)
        {
            throw DataException.AtByte(path, bytes.Length, $"truncated: the header promises {items} data bytes ending at byte {expected}, the file ends at byte {bytes.Length}");
        }
        if (bytes.Length > expected)
        {
            throw DataException.AtByte(path, expected, $"{bytes.Length - expected} unexpected bytes after the data");
        }
        return (sizes, bytes, headerLength);
    }
}
