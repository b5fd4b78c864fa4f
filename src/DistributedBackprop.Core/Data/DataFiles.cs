using System.IO.Compression;

namespace DistributedBackprop.Data;

/// <summary>File helpers shared by the readers.</summary>
public static class DataFiles
{
    /// <summary>Opens a file, transparently un-gzipping it when it starts with the gzip magic 1f 8b.</summary>
    public static Stream OpenMaybeGzip(string path)
    {
        FileStream file;
        try
        {
            file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw DataException.InFile(path, $"cannot open: {e.Message}");
        }
        Span<byte> magic = stackalloc byte[2];
        int read = file.Read(magic);
        file.Position = 0;
        if (read == 2 && magic[0] == 0x1f && magic[1] == 0x8b)
        {
            return new GZipStream(file, CompressionMode.Decompress);
        }
        return file;
    }

    /// <summary>The whole (decompressed) content of a file.</summary>
    public static byte[] ReadAllMaybeGzip(string path)
    {
        using Stream stream = OpenMaybeGzip(path);
        using var memory = new MemoryStream();
        try
        {
            stream.CopyTo(memory);
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException)
        {
            throw DataException.AtByte(path, memory.Length, $"corrupt or truncated gzip stream ({e.Message})");
        }
        return memory.ToArray();
    }

    /// <summary>
    /// Writes a file atomically: the content goes to a temporary file beside the target, which is renamed
    /// over the target only once complete. A failure leaves no partial file behind.
    /// </summary>
    public static void WriteAtomically(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        string? directory = Path.GetDirectoryName(full);
        if (directory is not null && !Directory.Exists(directory))
        {
            throw new IOException($"{path}: directory {directory} does not exist");
        }
        string temporary = Path.Combine(directory ?? ".", $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, full, overwrite: true);
        }
        catch (Exception e)
        {
            try
            {
                File.Delete(temporary);
            }
            catch (Exception cleanup) when (cleanup is IOException or UnauthorizedAccessException)
            {
                // The original error matters more than a leftover temporary file.
            }
            if (e is IOException or UnauthorizedAccessException)
            {
                // Named after the target, not the temporary file; a full disk or a read-only file system is
                // one line for the user, and the previous file (if any) is untouched.
                throw new IOException($"{path}: cannot write ({WithoutTemporaryName(e.Message, temporary)}); the previous file, if any, is unchanged", e);
            }
            throw;
        }
    }

    /// <summary>
    /// An I/O error's message without the name of a temporary file this process made (.NET appends
    /// " : 'path'"): the user's line names the file they asked for.
    /// </summary>
    public static string WithoutTemporaryName(string message, string temporary) =>
        message.Replace($" : '{temporary}'", "", StringComparison.Ordinal).Replace(temporary, "a temporary file", StringComparison.Ordinal);
}
