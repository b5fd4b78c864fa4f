using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace DistributedBackprop.Actors.Security;

/// <summary>
/// Who is at the other end of an authenticated connection, read from its certificate (never from the
/// bytes it sends): its role (parameter-server or worker), its node name, and the Akka address the
/// cluster CA issued the certificate for. Frames on that connection may only speak for that address.
/// </summary>
public sealed record PeerIdentity(string Role, string NodeName, string AkkaAddress)
{
    public override string ToString() => $"{Role} {NodeName} ({AkkaAddress})";
}

/// <summary>
/// A node's credentials in a secure cluster: its certificate (with private key) issued by the cluster CA,
/// and the CA certificate every peer must chain to. One instance serves Akka.Remote's TLS (mutual, the
/// validator below) and the bulk channel's.
/// </summary>
public sealed class NodeIdentity(X509Certificate2 certificate, X509Certificate2 authority)
{
    public X509Certificate2 Certificate { get; } = certificate;
    public X509Certificate2 Authority { get; } = authority;

    /// <summary>The peer's identity if its certificate chains to this cluster's CA and carries an identity; otherwise null and why.</summary>
    public PeerIdentity? Validate(X509Certificate? presented, out string problem)
    {
        if (presented is null)
        {
            problem = "no certificate presented";
            return null;
        }
        using var peer = presented as X509Certificate2 is { } c2 ? new X509Certificate2(c2) : X509CertificateLoader.LoadCertificate(presented.GetRawCertData());
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(Authority);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationTime = DateTime.Now;
        if (!chain.Build(peer))
        {
            problem = "certificate not issued by this cluster's CA (" + string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim())) + ")";
            return null;
        }
        if (!chain.ChainElements[^1].Certificate.RawDataMemory.Span.SequenceEqual(Authority.RawDataMemory.Span) || chain.ChainElements.Count != 2)
        {
            problem = "certificate not issued directly by this cluster's CA";
            return null;
        }
        PeerIdentity? identity = Describe(peer);
        problem = identity is null ? "certificate carries no node identity" : "";
        return identity;
    }

    /// <summary>The identity fields a node certificate of this cluster carries: OU = role, CN = node name, one SAN URI = Akka address.</summary>
    public static PeerIdentity? Describe(X509Certificate2 certificate)
    {
        string role = certificate.SubjectName.EnumerateRelativeDistinguishedNames()
            .Where(n => n.GetSingleElementType().FriendlyName == "OU" || n.GetSingleElementType().Value == "2.5.4.11")
            .Select(n => n.GetSingleElementValue() ?? "").FirstOrDefault() ?? "";
        string name = certificate.GetNameInfo(X509NameType.SimpleName, forIssuer: false);
        var san = certificate.Extensions.OfType<X509SubjectAlternativeNameExtension>().FirstOrDefault();
        string? address = null;
        if (san is not null)
        {
            // The .NET API enumerates DNS names and IPs only; URIs are read from the raw extension.
            var reader = new System.Formats.Asn1.AsnReader(san.RawData, System.Formats.Asn1.AsnEncodingRules.DER);
            var sequence = reader.ReadSequence();
            var uriTag = new System.Formats.Asn1.Asn1Tag(System.Formats.Asn1.TagClass.ContextSpecific, 6);
            while (sequence.HasData)
            {
                if (sequence.PeekTag().HasSameClassAndValue(uriTag))
                {
                    address = sequence.ReadCharacterString(System.Formats.Asn1.UniversalTagNumber.IA5String, uriTag);
                }
                else
                {
                    sequence.ReadEncodedValue();
                }
            }
        }
        return role.Length == 0 || address is null ? null : new PeerIdentity(role, name, address);
    }

    /// <summary>SHA-256 of a certificate's DER bytes, lowercase hex: the pin a join token carries.</summary>
    public static string Pin(X509Certificate2 certificate) => Convert.ToHexStringLower(SHA256.HashData(certificate.RawData));
}
