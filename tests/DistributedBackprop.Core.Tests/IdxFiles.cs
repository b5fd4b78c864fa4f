namespace DistributedBackprop.Tests;

/// <summary>Test data in the IDX format the MNIST family ships in (also linked into the CLI tests).</summary>
public static class IdxFiles
{
    /// <summary>An IDX file of unsigned bytes: magic 0x0000 08 d, the d sizes big-endian, the data.</summary>
    public static void WriteBytes(string path, int[] dimensions, byte[] data)
    {
        using var file = File.Create(path);
        file.Write([0, 0, 0x08, (byte)dimensions.Length]);
        Span<byte> size = stackalloc byte[4];
        foreach (int d in dimensions)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(size, d);
            file.Write(size);
        }
        file.Write(data);
    }
}
