using System.Security.Cryptography;

namespace DistributedBackprop.Actors.Security;

/// <summary>
/// The one credential a worker needs: <c>DBPTKN-1-&lt;CA pin&gt;-&lt;secret&gt;</c> (the shape of Docker Swarm's
/// join token). The pin is the SHA-256 of the cluster CA certificate, so a worker holding the token talks
/// only to a server whose certificate that CA signed; the secret proves to the server that the worker
/// was given the token. Both parts are lowercase hex (64 digits each).
/// </summary>
public sealed record JoinToken(string CaPin, byte[] Secret)
{
    private const string Prefix = "DBPTKN-1-";
    public const int SecretBytes = 32;

    public static JoinToken Create(string caPin) => new(caPin, RandomNumberGenerator.GetBytes(SecretBytes));

    public override string ToString() => $"{Prefix}{CaPin}-{Convert.ToHexStringLower(Secret)}";

    /// <summary>Parses a token; the message of the <see cref="FormatException"/> says what is wrong without echoing the secret.</summary>
    public static JoinToken Parse(string text)
    {
        text = text.Trim();
        if (!text.StartsWith(Prefix, StringComparison.Ordinal))
        {
            throw new FormatException($"not a dbp join token (it must start with {Prefix})");
        }
        string[] parts = text[Prefix.Length..].Split('-');
        if (parts.Length != 2 || parts[0].Length != 64 || parts[1].Length != 2 * SecretBytes || !IsHex(parts[0]) || !IsHex(parts[1]))
        {
            throw new FormatException($"malformed dbp join token (expected {Prefix}<64 hex digits>-<64 hex digits>)");
        }
        return new JoinToken(parts[0], Convert.FromHexString(parts[1]));
    }

    /// <summary>Reads a token file written by <c>dbp serve --token-file</c>.</summary>
    public static JoinToken ReadFile(string path)
    {
        string text;
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists)
            {
                throw new ArgumentException($"{path}: join token file not found");
            }
            if (info.Length > 4096)
            {
                throw new ArgumentException($"{path}: {info.Length} bytes is too large for a join token file");
            }
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{path}: cannot read the join token: {e.Message}", e);
        }
        try
        {
            return Parse(text);
        }
        catch (FormatException e)
        {
            throw new ArgumentException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>Compares secrets in constant time (a timing side channel must not reveal the secret byte by byte).</summary>
    public bool SecretEquals(ReadOnlySpan<byte> other) => CryptographicOperations.FixedTimeEquals(Secret, other);

    private static bool IsHex(string text) => text.All(char.IsAsciiHexDigitLower);
}
